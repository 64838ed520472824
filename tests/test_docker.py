"""The container image of a model and a plugin (``docker-build``), and how the platforms run it.

The build context is checked everywhere: installed as the Dockerfile installs it, and its
own ENTRYPOINT started from the context folder with the Dockerfile's ENV, as KServe and
SageMaker start the image (on a read-only root filesystem where this process may make one).
Where podman can be installed and run, the README's images are built on a local Debian base
image (no image can be pulled here), run as the README runs them, and scored through their
published ports; elsewhere those tests are skipped and say why.
"""

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests
import yaml

from conftest import MNIST, ROOT, SAMPLES, WINE, WINE_JSON, Server, free_port, run_main

WINE_ARGS = ["--model-uri", WINE / "model", "--plugin-file", WINE / "plugin.py"]
EXPECTED = [5.89, 5.92, 5.95]  # the README's answer for predict-wine-quality.json
INVOCATIONS = WINE / "data" / "invocations-wine.json"  # the same wines as MLflow's /invocations takes them
V2_CLIENT = WINE / "v2_client.py"  # the README's tritonclient script
VENV_PATH = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"}  # the image's PATH has its venv first
BASE_IMAGE = "localhost/mlflow-pss-test-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SLOW = 900  # seconds for an install, a debootstrap or an image build


def docker_build(*args, env=None, timeout=SLOW):
    return subprocess.run([sys.executable, "-m", "mlflow_pluggable_scoring_server.docker_build", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)


def instruction(dockerfile, name):
    """The (JSON) argument list of a Dockerfile instruction; line continuations joined."""
    text = dockerfile.replace("\\\n", " ")
    return json.loads(re.search(rf"^{name}\s.*?(\[.*\])\s*$", text, re.M).group(1))


def assert_scores_the_sample(url):
    r = requests.post(url + "/api/predict", data=WINE_JSON.read_bytes(), headers={"Content-Type": "application/json"},
                      timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == pytest.approx(EXPECTED, abs=0.01)


def assert_scores_as_sagemaker(url, pyfunc=True):
    """What SageMaker asks: GET /ping, then POST /invocations: MLflow's request and answer for pyfunc, the plugin's
    own for the wine plugin."""
    assert requests.get(url + "/ping", timeout=10).status_code == 200
    body = INVOCATIONS if pyfunc else WINE_JSON
    r = requests.post(url + "/invocations", data=body.read_bytes(), headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    assert (r.json()["predictions"] if pyfunc else r.json()) == pytest.approx(EXPECTED, abs=0.01)


def assert_scores_over_v2(url, model):
    """The wines scored through tritonclient, binary tensors, as the README's v2_client.py sends them."""
    proc = subprocess.run([sys.executable, str(V2_CLIENT), "--url", url.removeprefix("http://"), "--model", model],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == pytest.approx(EXPECTED, abs=0.01)


def entrypoint(context, *args):
    """The context's ENTRYPOINT with ``args`` after it: ``docker run IMAGE ARGS`` as a process, run from the context."""
    return [*instruction((context / "Dockerfile").read_text(), "ENTRYPOINT"), *map(str, args)]


def image_environment(context, tmp):
    """The Dockerfile's ENV for its entrypoint run as a process: ``tmp`` stands for the container's /tmp, and PATH
    leads to this venv."""
    text = (context / "Dockerfile").read_text().replace("\\\n", " ")
    env = dict(pair.split("=", 1) for line in re.findall(r"^ENV\s+(.+)$", text, re.M) for pair in shlex.split(line))
    env = {name: re.sub(r"^/tmp(?=/|$)", str(tmp), value) for name, value in env.items()}
    return {**env, **VENV_PATH, "TMPDIR": str(tmp)}


@functools.cache
def can_make_root_read_only():
    """Whether this process may run a command in a mount namespace of its own with / read-only (root, unshare)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -o remount,bind,ro / && test ! -w /"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def start_context(context, args, env, tmp_path):
    """The context's entrypoint started as a container runs it: from the context folder, with the Dockerfile's ENV,
    ``env`` and a free ``PORT``; where :func:`can_make_root_read_only`, the root filesystem read-only but a tmpfs
    standing for the container's /tmp (as ``podman run --read-only``)."""
    tmp = tmp_path / "container-tmp"
    tmp.mkdir()
    mounts = 'mount -o remount,bind,ro / && mount -t tmpfs tmpfs "$0" && ' if can_make_root_read_only() else ""
    namespace = ["unshare", "--mount", "--propagation", "private"] if mounts else []
    command = [*namespace, "sh", "-c", mounts + 'cd "$1" && shift && exec "$@"', str(tmp), str(context), *entrypoint(context, *args)]
    port = free_port()
    return Server(command, port, tmp_path / "server.log", env={**image_environment(context, tmp), "PORT": str(port), **env})


def assert_wrote_only_to_tmp(server):
    """Nothing the server tried to write outside the container's /tmp: a read-only root would have refused it."""
    assert not re.search(r"Read-only file system|Permission denied", server.log()), server.log()


@pytest.fixture(scope="module")
def no_model_context(tmp_path_factory):
    """The build context of an image with no model and no plugin (pyfunc), for a model given when it runs."""
    context = tmp_path_factory.mktemp("no-model") / "context"
    proc = run_main("docker-build", "--no-model", "--docker-image", "mlflow-scoring", "--context-dir", context,
                    "--builder", "none")
    assert proc.returncode == 0, proc.stderr
    return context


def test_the_image_port_and_serve(no_model_context):
    """`docker run IMAGE`: 5005; `docker run IMAGE serve` (SageMaker's way): 8080; PORT (KServe's, Cloud Run's)
    overrides both, MLFLOW_PSS_PORT overrides PORT, a flag overrides all. No model inside: /mnt/models, KServe's."""
    clean = {name: value for name, value in os.environ.items() if name != "PORT" and not name.startswith("MLFLOW_PSS_")}

    def settings(*args, **env):
        proc = subprocess.run(entrypoint(no_model_context, *args, "--print-settings"), cwd=no_model_context,
                              env={**clean, **VENV_PATH, **env}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return yaml.safe_load(proc.stdout)

    plain = settings()
    assert (plain["host"], plain["port"], plain["plugin"], plain["model_uri"]) == ("0.0.0.0", 5005, "pyfunc", "/mnt/models")
    assert not any((no_model_context / "model").iterdir()) and not any((no_model_context / "plugin").iterdir())
    assert settings("serve")["port"] == 8080
    assert settings(PORT="7000")["port"] == settings("serve", PORT="7000")["port"] == 7000
    assert settings("serve", PORT="7000", MLFLOW_PSS_PORT="7001")["port"] == 7001
    assert settings("serve", "--port", "7002", PORT="7000", MLFLOW_PSS_PORT="7001")["port"] == 7002


@pytest.mark.slow  # a server process (the inner loop stays under 3 min)
def test_context_runs_as_kserve_runs_it(no_model_context, tmp_path, sample_models):
    """KServe's way: the model mounted at /mnt/models (a copy here, named by MLFLOW_PSS_MODEL_URI), the port in PORT,
    the InferenceService's name as --model-name; a read-only root but /tmp; scored over V2 with tritonclient.
    (Not as another user here: this Python lives in root's home. The podman test runs the image as uid 12345.)"""
    mounted = tmp_path / "mnt" / "models"
    shutil.copytree(WINE / "model", mounted)
    server = start_context(no_model_context, ["--model-name", "wine"], {"MLFLOW_PSS_MODEL_URI": str(mounted)}, tmp_path)
    try:
        server.wait_ready(path="/v2/health/ready")
        assert_scores_over_v2(server.url, "wine")
    finally:
        server.stop()
    assert_wrote_only_to_tmp(server)


@pytest.mark.slow  # a server process (the inner loop stays under 3 min)
def test_context_runs_as_sagemaker_runs_it(no_model_context, tmp_path, sample_models):
    """SageMaker's way: `serve` as the argument, the model where SageMaker extracts it (/opt/ml/model; the sample's folder
    here), then /ping and /invocations. On a free PORT: 8080, serve's own, may be taken here (test_the_image_port_and_serve)."""
    server = start_context(no_model_context, ["serve"], {"MLFLOW_PSS_MODEL_URI": str(WINE / "model")}, tmp_path)
    try:
        server.wait_ready(path="/ping")
        assert_scores_as_sagemaker(server.url)
    finally:
        server.stop()
    assert_wrote_only_to_tmp(server)


def test_docker_build_takes_plugins_and_models_as_serve_does(tmp_path, sample_models):
    """An installed plugin by name with its options and the model's requirements (the README's command); a conf file
    of several models, one through a plugin file: the image's conf.yaml gives what serve would serve, with paths
    inside the image."""
    (readme,) = readme_docker_blocks()["context"]  # the README's, not built: TensorFlow would take minutes
    digits = tmp_path / "digits"
    proc = run_main(*shlex.split(readme)[1:], "--workers", "2", "--context-dir", digits, "--builder", "none")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((digits / "conf.yaml").read_text()) == {
        "host": "0.0.0.0", "port": 5005, "plugin": "image", "plugin_options": {"size": "28x28"}, "model_uri": "model",
        "workers": 2, "model_name": "mlflow-model"}
    assert (digits / "model" / "MLmodel").exists() and not any((digits / "plugin").iterdir())
    requirements = (digits / "requirements.txt").read_text().splitlines()
    assert requirements == (MNIST / "model" / "requirements.txt").read_text().split()  # TensorFlow among them

    several = tmp_path / "several"
    proc = run_main("docker-build", "--conf", SAMPLES / "several_models.yaml", "--packages", "roman",
                    "--docker-image", "several", "--context-dir", several, "--builder", "none")
    assert proc.returncode == 0, proc.stderr
    conf = yaml.safe_load((several / "conf.yaml").read_text())
    assert conf == {"host": "0.0.0.0", "port": 5005, "models": [
        {"name": "wine", "model_uri": "model/wine", "plugin": "plugin/plugin.py"},
        {"name": "digits", "model_uri": "model/digits", "plugin": "image"},
        {"name": "wine-pyfunc", "model_uri": "model/wine-pyfunc"}]}
    assert all((several / model["model_uri"] / "MLmodel").exists() for model in conf["models"])
    assert (several / "plugin" / "plugin.py").read_text() == (WINE / "plugin.py").read_text()
    assert (several / "requirements.txt").read_text() == "roman\n"


@pytest.mark.slow
def test_context_serves_with_the_containers_own_command(tmp_path, sample_models):
    context = tmp_path / "context"
    # No docker, podman or buildah on this PATH: docker-build writes the context and says so.
    proc = docker_build(*WINE_ARGS, "--docker-image", "wine", "--context-dir", context,
                        env={"PATH": str(Path(sys.executable).parent)})
    assert proc.returncode == 0, proc.stderr
    assert "no Docker engine, podman or buildah here" in proc.stderr
    assert f"build the image with: docker build --tag wine {context}" in proc.stderr

    dockerfile = (context / "Dockerfile").read_text()
    assert dockerfile == (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (\S+)", dockerfile, re.M).group(1) not in ("root", "0")
    assert re.search(r"^EXPOSE 5005 8080$", dockerfile, re.M) and re.search(r"^HEALTHCHECK ", dockerfile, re.M)
    assert (context / "model" / "MLmodel").exists() and (context / "plugin" / "plugin.py").exists()
    assert yaml.safe_load((context / "conf.yaml").read_text())["host"] == "0.0.0.0"
    wheels = list((context / "wheels").glob("*.whl"))
    assert len(wheels) == 1

    # The Dockerfile's install, on this machine: a fresh venv with the wheel and requirements.txt.
    venv = tmp_path / "venv"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    uv_env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=uv_env)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "--compile-bytecode",
                    str(wheels[0]), "-r", str(context / "requirements.txt")], check=True, env=uv_env, timeout=SLOW)

    port = free_port()
    command = shlex.join(instruction(dockerfile, "ENTRYPOINT") + ["--host", "127.0.0.1", "--port", str(port)])
    path = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin"}
    server = Server(["bash", "-c", f"cd {shlex.quote(str(context))} && exec {command}"], port, tmp_path / "server.log", env=path)
    try:
        server.wait_ready()
        assert_scores_the_sample(server.url)
        status = requests.get(server.url + "/api/status").json()
        assert status["system"]["current_dir"] == str(context)
        assert status["model"]["uri"] == "model"
        healthcheck = ["/bin/sh", "-c", re.search(r"^HEALTHCHECK .*? CMD (.*)$", dockerfile.replace("\\\n", " "), re.M).group(1)]
        deadline = time.monotonic() + 60  # ready once the model is loaded
        while subprocess.run(healthcheck, env={**os.environ, **path, "PORT": str(port)}, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the HEALTHCHECK command never succeeded"
            time.sleep(0.5)
    finally:
        server.stop()

    # The server installed from that wheel (no checkout to build from) packs its own files into the next context.
    repacked = tmp_path / "repacked"
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "mlflow_pluggable_scoring_server.docker_build", *map(str, WINE_ARGS),
                           "--docker-image", "wine", "--context-dir", str(repacked), "--builder", "none"],
                          capture_output=True, text=True, cwd=tmp_path)  # not the checkout: `-m` would import it
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (repacked / "wheels").glob("*.whl")
    assert wheel.name == wheels[0].name
    with zipfile.ZipFile(wheel) as new, zipfile.ZipFile(wheels[0]) as built:
        assert sorted(new.namelist()) == sorted(built.namelist())
        assert all(new.read(n) == built.read(n) for n in built.namelist() if not n.endswith("/RECORD"))


def test_docker_build_subcommand_and_its_errors(tmp_path, sample_models):
    script = Path(sys.executable).parent / "mlflow-pluggable-scoring-server"
    context = tmp_path / "context"
    proc = subprocess.run([script, "docker-build", *map(str, WINE_ARGS), "--docker-image", "wine",
                           "--context-dir", context, "--builder", "none"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "not built" in proc.stderr and (context / "Dockerfile").exists()

    # The errors: main() in-process.
    again = run_main("docker-build", *WINE_ARGS, "--docker-image", "wine", "--context-dir", context, "--builder", "none")
    assert again.returncode == 2 and f"error: context folder '{context}' is not empty" in again.stderr
    missing = run_main("docker-build", "--model-uri", WINE / "model", "--plugin-file", "nope.py", "--docker-image", "wine",
                       "--builder", "none")
    assert missing.returncode == 2 and "error: plugin file 'nope.py' does not exist" in missing.stderr
    no_model = run_main("docker-build", "--model-uri", "models:/no_such_model/1", "--plugin-file", WINE / "plugin.py",
                        "--docker-image", "wine", "--builder", "none",
                        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert no_model.returncode == 2 and "does not resolve" in no_model.stderr
    nothing = run_main("docker-build", "--plugin", "image", "--docker-image", "x", "--builder", "none")
    assert nothing.returncode == 2 and "error: no model: give --model-uri" in nothing.stderr
    unread = run_main("docker-build", "--no-model", "--install-model-requirements", "--docker-image", "x", "--builder", "none")
    assert unread.returncode == 2 and "error: --install-model-requirements needs the model" in unread.stderr


def test_the_2020_command_line_writes_the_context(tmp_path, sample_models):
    """As the 2020 README ran it: the script's path, --plugin-full-class and --tmp-model-dir."""
    context = tmp_path / "tmp"
    proc = subprocess.run([sys.executable, "mlflow_pluggable_scoring_server/docker_build.py", "--plugin-file",
                           "plugin_samples/sklearn_wine/plugin.py", "--plugin-full-class", "plugin.Plugin", "--model-uri",
                           "plugin_samples/sklearn_wine/model", "--docker-image", "wine", "--tmp-model-dir", str(context),
                           "--builder", "none"], capture_output=True, text=True, cwd=ROOT, timeout=SLOW)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (context / "Dockerfile").exists() and (context / "model" / "MLmodel").exists()
    assert yaml.safe_load((context / "conf.yaml").read_text())["plugin_class"] == "plugin.Plugin"


def readme_docker_blocks():
    """The README's ```bash blocks marked ``<!-- test: docker [ROLE] -->``, as ``{ROLE or "docker": commands}``."""
    from test_readme import BLOCKS

    blocks = {}
    for marker, commands, _, _ in BLOCKS:
        if marker and marker[0] == "docker":
            assert (marker[1] or "docker") not in blocks
            blocks[marker[1] or "docker"] = commands
    assert set(blocks) == {"docker", "context", "sagemaker", "kserve"}
    return blocks
