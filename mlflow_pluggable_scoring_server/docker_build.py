"""Build a container image that serves a model through a plugin.

    mlflow-pluggable-scoring-server docker-build [--conf FILE] [--model-uri URI | --no-model] \\
        [--plugin-file F | --plugin NAME] [--plugin-option K=V ...] [serve's other flags] \\
        --docker-image NAME [--context-dir DIR] [--base-image IMG]

The plugin, the model and the other settings are read as ``serve`` reads them (conf file,
``MLFLOW_PSS_*`` variables, flags; no plugin: ``pyfunc``). It writes a build context (the
project's top-level ``Dockerfile``, the server as a wheel, the packages, the plugin file with
its siblings, the model unless ``--no-model``, and the image's conf file: those settings with
paths inside the image), then builds it with ``docker build`` when a Docker engine answers,
else with podman or buildah, else it stops there and says how to build it. How the image runs
(port, ``serve``, non-root user, read-only root) is the Dockerfile's to say.

The 2020 way works too: ``python mlflow_pluggable_scoring_server/docker_build.py`` (a script
path) with ``--plugin-full-class`` (``--plugin-class``) and ``--tmp-model-dir``
(``--context-dir``).
"""

if __name__ == "__main__" and not __package__:  # run as a script: import the package it belongs to
    import os as _os
    import sys as _sys

    _here = _os.path.dirname(_os.path.abspath(__file__))
    _sys.path[:] = [_os.path.dirname(_here)] + [p for p in _sys.path if _os.path.abspath(p or ".") != _here]
    __package__ = "mlflow_pluggable_scoring_server"

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import __version__
from .config import FIELDS, add_setting_flags, build_settings
from .envs import PACKAGE_DIR, SERVER_DIST, read_model_requirements
from .errors import StartupError
from .models import check_model_uri
from .packages import find_uv, run_installer
from .plugin import is_plugin_file

DOCKERFILE = Path(__file__).resolve().parent / "Dockerfile"
BUILDERS = ("docker", "podman", "buildah")
CONTAINER_PORT = 5005  # `docker run IMAGE`; see the Dockerfile for `serve` and PORT
MOUNTED_MODEL = "/mnt/models"  # where KServe mounts the model of an InferenceService's storageUri
IMAGE_SETTINGS = ("host", "port", "env_manager")  # the image's own: neither docker-build's flags nor in its conf
BUILD_SETTINGS = ("packages", "install_model_requirements")  # installed at build time, not in the image's conf
INSTALL_RECORDS = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json")  # written by installers, not in a wheel


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="mlflow-pluggable-scoring-server docker-build",
        description="Write a container build context for a model and a plugin, and build the image. The settings are"
                    " read as `serve` reads them and go into the image's conf.yaml: the model is downloaded into the image,"
                    " a plugin file copied with the .py files beside it, the packages installed. The image listens on"
                    f" 0.0.0.0:{CONTAINER_PORT} (PORT in its environment changes it).",
        allow_abbrev=False,
    )
    add_setting_flags(p, skip=IMAGE_SETTINGS)
    p.add_argument("--plugin-full-class", dest="plugin_class", help="--plugin-class's 2020 name.")
    p.add_argument("--no-model", action="store_true",
                   help="Put no model in the image: it loads its model URI when it starts, --model-uri's (not downloaded)"
                        f" or {MOUNTED_MODEL}, where KServe mounts the model of an InferenceService's storageUri.")
    p.add_argument("--docker-image", required=True, metavar="NAME", help="Name (and tag) of the image.")
    p.add_argument("--context-dir", "--tmp-model-dir", metavar="DIR",
                   help="Where to write the build context, the model in it (new or empty); default: a temporary folder."
                   " (--tmp-model-dir: its 2020 name.)")
    p.add_argument("--base-image", metavar="IMAGE", help="Base image with Python 3.11 and venv (default: the Dockerfile's, python:3.11-slim).")
    p.add_argument("--builder", choices=("auto", *BUILDERS, "none"), default="auto",
                   help="What builds the image: auto (docker, else podman, else buildah), one of them, or none (write the context only).")
    return p.parse_args(argv)


def write_context(context, settings, no_model):
    """Fill the (empty) folder ``context`` with everything ``docker build`` needs to serve ``settings``."""
    import yaml

    context.mkdir(parents=True, exist_ok=True)
    if any(context.iterdir()):
        raise StartupError(f"context folder '{context}' is not empty")
    shutil.copy(DOCKERFILE, context / "Dockerfile")
    (context / ".dockerignore").write_text("**/__pycache__\n")
    given = settings.model_dump(mode="json", exclude_unset=True)
    conf = {"host": "0.0.0.0", "port": CONTAINER_PORT,
            **{key: value for key, value in given.items() if key not in IMAGE_SETTINGS + BUILD_SETTINGS}}
    several = conf.get("models", [])
    for entry in several:
        entry.pop("packages", None)  # installed in the image with the others
    copy_plugins(context, [conf, *several])
    requirements = settings.all_packages()
    # Where each model goes in the image: model/ for one, model/NAME/ for several; none with --no-model.
    if no_model:
        places = {}
    elif several:
        places = {f"model/{entry['name']}": entry for entry in several}
    else:
        places = {"model": conf}
    for place, entry in places.items():
        download_model(entry["model_uri"], context / place)
        if settings.install_model_requirements:
            requirements += [r for r in read_model_requirements(str(context / place)) if r not in requirements]
        entry["model_uri"] = place
    (context / "model").mkdir(exist_ok=True)  # empty with --no-model: the Dockerfile copies it all the same
    if places and not several:  # the V2 name a models:/ URI gave, kept for the downloaded copy
        conf["model_name"] = settings.served_models()[0].name
    (context / "requirements.txt").write_text("".join(f"{p}\n" for p in requirements))
    (context / "conf.yaml").write_text(
        "# The image's settings. MLFLOW_PSS_* variables and the flags after `docker run IMAGE` override them;\n"
        "# PORT (KServe's, Cloud Run's) sets the port. The packages are installed in the image (requirements.txt).\n"
        + yaml.safe_dump(conf, sort_keys=False))
    server_wheel(context / "wheels")


def copy_plugins(context, entries):
    """Copy the plugin files that ``entries`` (conf mappings) name, with the .py files beside them (a plugin may
    import its siblings), into the context's plugin/ folder, and point the entries at the copies. The files of
    one folder go in plugin/; those of several folders in plugin/1/, plugin/2/..."""
    files = [entry for entry in entries if is_plugin_file(entry.get("plugin", ""))]
    folders = list(dict.fromkeys(Path(entry["plugin"]).resolve().parent for entry in files))
    places = {folder: Path("plugin", str(i) if len(folders) > 1 else "") for i, folder in enumerate(folders, 1)}
    (context / "plugin").mkdir()  # empty for installed plugins: copied all the same
    for folder, place in places.items():
        (context / place).mkdir(exist_ok=True)
        for source in folder.glob("*.py"):
            shutil.copy(source, context / place / source.name)
        print(f"docker-build: plugin folder {folder} -> {context / place}", file=sys.stderr)
    for entry in files:
        path = Path(entry["plugin"]).resolve()
        entry["plugin"] = str(places[path.parent] / path.name)


def download_model(model_uri, dest):
    """Fetch the model's files (any MLflow URI) into ``dest``."""
    import mlflow.artifacts

    print(f"docker-build: model {model_uri} -> {dest}", file=sys.stderr)
    dest.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        shutil.move(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp), dest)
    for cache in dest.rglob("__pycache__"):
        shutil.rmtree(cache)


def server_wheel(dest):
    """A wheel of the running server in ``dest``: built from the checkout, or repacked from the installed files."""
    dest.mkdir()
    source = PACKAGE_DIR.parent
    if (source / "setup.py").exists():
        uv = find_uv()
        cmd = [uv, "build", "--wheel", "--out-dir", str(dest), str(source)] if uv else \
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dest), str(source)]
        print(f"docker-build: building the server's wheel from {source}", file=sys.stderr)
        run_installer(cmd, "building the server's wheel")
    else:
        repack_installed_wheel(dest)
    (dest / ".gitignore").unlink(missing_ok=True)  # uv build leaves one
    print(f"docker-build: server wheel {next(dest.glob('*.whl')).name}", file=sys.stderr)


def repack_installed_wheel(dest):
    """Zip the installed distribution's files (package and .dist-info) back into a wheel."""
    dist = importlib.metadata.distribution(SERVER_DIST)
    name = f"{SERVER_DIST.replace('-', '_')}-{__version__}"
    wheel = dest / f"{name}-py3-none-any.whl"
    files = [f for f in dist.files or [] if f.parts[0] in (PACKAGE_DIR.name, f"{name}.dist-info") and "__pycache__" not in f.parts]
    if not any(f.parts[0] == PACKAGE_DIR.name for f in files):
        raise StartupError(f"cannot find the installed files of {SERVER_DIST} to pack a wheel")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            if f.name not in INSTALL_RECORDS:
                z.write(f.locate(), str(f))
        record = f"{name}.dist-info/RECORD"
        z.writestr(record, "".join(f"{n},,\n" for n in z.namelist()) + f"{record},,\n")


def find_builder():
    """docker if its engine answers, else podman, else buildah; None when there is none."""
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0:
                return "docker"
        except subprocess.TimeoutExpired:  # an engine that does not answer is no engine
            pass
    return next((tool for tool in BUILDERS[1:] if shutil.which(tool)), None)


def build_command(builder, context, image, base_image):
    cmd = [builder, "build" if builder != "buildah" else "bud", "--tag", image]
    if builder != "docker":
        cmd += ["--format", "docker"]  # the OCI format has no HEALTHCHECK
    if base_image:
        cmd += ["--build-arg", f"BASE_IMAGE={base_image}"]
    return cmd + [str(context)]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    flags = {key: value for key, value in vars(args).items() if key in FIELDS}
    if args.no_model:
        flags["model_uri"] = args.model_uri or MOUNTED_MODEL
    try:
        settings = build_settings(args.conf, **flags)
        if args.no_model and settings.install_model_requirements:
            raise StartupError("--install-model-requirements needs the model: it cannot be read at build time with --no-model")
        for model in settings.served_models():
            if is_plugin_file(model.plugin) and not os.path.isfile(model.plugin):
                raise StartupError(f"plugin file '{model.plugin}' does not exist")
            if not args.no_model:
                check_model_uri(model.model_uri)
        context = Path(args.context_dir or tempfile.mkdtemp(prefix="mlflow-pss-docker-"))
        write_context(context, settings, args.no_model)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"docker-build: build context written to {context}", file=sys.stderr)
    builder = find_builder() if args.builder == "auto" else None if args.builder == "none" else args.builder
    cmd = build_command(builder or "docker", context, args.docker_image, args.base_image)
    if builder is None:
        print("docker-build: no Docker engine, podman or buildah here" if args.builder == "auto" else "docker-build: not built",
              file=sys.stderr)
        print(f"docker-build: build the image with: {' '.join(cmd)}", file=sys.stderr)
        return 0
    print(f"docker-build: {' '.join(cmd)}", file=sys.stderr)
    status = subprocess.run(cmd).returncode
    if status != 0:
        print(f"error: {builder} build failed with exit status {status}", file=sys.stderr)
        return 1
    print(f"docker-build: image {args.docker_image} built; run it with: "
          f"{'podman' if builder == 'buildah' else builder} run -p {CONTAINER_PORT}:{CONTAINER_PORT} {args.docker_image}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
