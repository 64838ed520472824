"""Build a container image that serves one model through one plugin.

    python -m mlflow_pluggable_scoring_server.docker_build --model-uri URI --plugin-file F \\
        [--plugin-class C] [--packages P,...] --docker-image NAME [--context-dir DIR] [--base-image IMG]

It writes a build context (the project's top-level ``Dockerfile``, the server as a wheel,
the plugin's packages, the plugin and the model, and the image's conf file), then builds
it with ``docker build`` when a Docker engine answers, else with podman or buildah, else it
stops there and says how to build it. The image runs the server as a non-root user on
0.0.0.0:5005, with a HEALTHCHECK.

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
from .envs import PACKAGE_DIR, SERVER_DIST
from .errors import StartupError
from .models import check_model_uri
from .packages import find_uv, run_installer
from .plugin import DEFAULT_PLUGIN_CLASS

DOCKERFILE = Path(__file__).resolve().parent / "Dockerfile"
BUILDERS = ("docker", "podman", "buildah")
CONTAINER_PORT = 5005
INSTALL_RECORDS = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json")  # written by installers, not in a wheel


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="mlflow-pluggable-scoring-server docker-build",
        description="Write a container build context for a model and a plugin, and build the image.",
    )
    p.add_argument("--model-uri", required=True, help="MLflow model URI (a path, runs:/, models:/, ...); downloaded.")
    p.add_argument("--plugin-file", required=True, metavar="FILE", help="The plugin's Python file (copied with the .py files beside it).")
    p.add_argument("--plugin-class", "--plugin-full-class", default=DEFAULT_PLUGIN_CLASS,
                   help="Plugin class in that file, as module.Class. (--plugin-full-class: its 2020 name.)")
    p.add_argument("--packages", default="", help="Extra pip packages the plugin needs, comma-separated; installed in the image.")
    p.add_argument("--docker-image", required=True, metavar="NAME", help="Name (and tag) of the image.")
    p.add_argument("--context-dir", "--tmp-model-dir", metavar="DIR",
                   help="Where to write the build context, the model in it (new or empty); default: a temporary folder."
                   " (--tmp-model-dir: its 2020 name.)")
    p.add_argument("--base-image", metavar="IMAGE", help="Base image with Python 3.11 and venv (default: the Dockerfile's, python:3.11-slim).")
    p.add_argument("--builder", choices=("auto", *BUILDERS, "none"), default="auto",
                   help="What builds the image: auto (docker, else podman, else buildah), one of them, or none (write the context only).")
    return p.parse_args(argv)


def write_context(context, model_uri, plugin_file, plugin_class, packages):
    """Fill the (empty) folder ``context`` with everything ``docker build`` needs."""
    context.mkdir(parents=True, exist_ok=True)
    if any(context.iterdir()):
        raise StartupError(f"context folder '{context}' is not empty")
    shutil.copy(DOCKERFILE, context / "Dockerfile")
    (context / ".dockerignore").write_text("**/__pycache__\n")
    plugin_dir = context / "plugin"
    plugin_dir.mkdir()
    for source in Path(plugin_file).resolve().parent.glob("*.py"):  # a plugin may import its siblings
        shutil.copy(source, plugin_dir / source.name)
    print(f"docker-build: plugin {plugin_file} -> {plugin_dir}", file=sys.stderr)
    download_model(model_uri, context / "model")
    (context / "requirements.txt").write_text("".join(f"{p}\n" for p in packages))
    (context / "conf.yaml").write_text(
        "# The image's settings; flags after `docker run IMAGE` override them.\n"
        f"host: 0.0.0.0\nport: {CONTAINER_PORT}\n"
        f"plugin: plugin/{Path(plugin_file).name}\nplugin_class: {plugin_class}\n"
        "model_uri: model\n"
        "# The packages are installed in the image (requirements.txt).\n"
        "workers: 1\n"
    )
    server_wheel(context / "wheels")


def download_model(model_uri, dest):
    """Fetch the model's files (any MLflow URI) into ``dest``."""
    import mlflow.artifacts

    print(f"docker-build: model {model_uri} -> {dest}", file=sys.stderr)
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
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    context = Path(args.context_dir or tempfile.mkdtemp(prefix="mlflow-pss-docker-"))
    try:
        check_model_uri(args.model_uri)
        if not os.path.isfile(args.plugin_file):
            raise StartupError(f"plugin file '{args.plugin_file}' does not exist")
        write_context(context, args.model_uri, args.plugin_file, args.plugin_class, packages)
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
