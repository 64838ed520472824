"""The container image of a model and a plugin (``docker-build``).

The build context is checked everywhere: installed as the Dockerfile installs it, and its
own ENTRYPOINT started from the context folder. Where podman can be installed and run, the
image itself is built on a local Debian base image (no image can be pulled here), run, and
scored through its published port; elsewhere that test is skipped and says why.
"""

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

from conftest import ROOT, WINE, WINE_JSON, Server, free_port, run_main

WINE_ARGS = ["--model-uri", WINE / "model", "--plugin-file", WINE / "plugin.py"]
EXPECTED = [5.89, 5.92, 5.95]  # the README's answer for predict-wine-quality.json
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
    assert re.search(r"^EXPOSE 5005$", dockerfile, re.M) and re.search(r"^HEALTHCHECK ", dockerfile, re.M)
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
        healthcheck = [arg.replace("5005", str(port)) for arg in instruction(dockerfile, "HEALTHCHECK")]
        deadline = time.monotonic() + 60  # ready once the model is loaded
        while subprocess.run(healthcheck, env={**os.environ, **path}, capture_output=True).returncode != 0:
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


def apt_install(packages):
    """Install Debian packages; None when done, else why not."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"{', '.join(packages)} missing, and apt-get cannot be run as root here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SLOW)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """Environment for podman commands that work here, with the local base image; skips saying why if impossible."""
    missing = [pkg for cmd, pkg in (("podman", "podman"), ("runc", "runc"), ("debootstrap", "debootstrap"))
               if not shutil.which(cmd, path=os.environ["PATH"] + ":/usr/sbin:/sbin")]
    reason = apt_install(missing) if missing else None
    if reason:
        pytest.skip(f"cannot test the image: {reason}")
    # runc cannot raise resource limits in a sandbox without CAP_SYS_RESOURCE: ask for modest ones.
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n\n[engine]\nruntime = "runc"\n')
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env).returncode != 0:
        make_base_image(tmp_path_factory.mktemp("rootfs") / "rootfs", env)
    smoke = subprocess.run(["podman", "run", "--rm", BASE_IMAGE, "python3", "-c", "print('ok')"],
                           capture_output=True, text=True, env=env, timeout=120)
    if smoke.stdout.strip() != "ok":
        pytest.skip(f"cannot test the image: podman cannot run a container here: {smoke.stderr.strip()[-500:]}")
    return env


def make_base_image(rootfs, env):
    """Debian bookworm (Python 3.11) with python3-venv, imported as BASE_IMAGE."""
    proc = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs),
                           DEBIAN_MIRROR], capture_output=True, text=True, timeout=SLOW)
    if proc.returncode != 0:
        pytest.skip(f"cannot test the image: debootstrap failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    # This machine's trust store (it may hold a proxy's CA), for pip in the image build.
    if CA_BUNDLE.exists():
        shutil.copy(CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        (rootfs / "etc/pip.conf").write_text(f"[global]\ncert = {CA_BUNDLE}\n")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--exclude=./var/cache/apt/archives/*.deb", "-c", "."],
                           stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, check=True, env=env, capture_output=True)
    assert tar.wait() == 0
    shutil.rmtree(rootfs)


def readme_docker_commands():
    """The README's build and run commands (the ```bash block marked ``<!-- test: docker -->``)."""
    from test_readme import BLOCKS

    blocks = [commands for marker, commands, _, _ in BLOCKS if marker and marker[0] == "docker"]
    assert len(blocks) == 1 and len(blocks[0]) == 2
    build, run = blocks[0]
    assert build.startswith("mlflow-pluggable-scoring-server docker-build ") and run.startswith("docker run ")
    return build, shlex.split(run)


@pytest.mark.slow
def test_readme_image_builds_runs_and_scores(podman, tmp_path, sample_models):
    """The README's commands, with podman for docker, a local base image, and the port on 127.0.0.1 only."""
    build, run = readme_docker_commands()
    build += f" --base-image {BASE_IMAGE} --context-dir {tmp_path / 'context'}"
    env = {**podman, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{podman['PATH']}"}
    proc = subprocess.run(["bash", "-c", build], capture_output=True, text=True, cwd=ROOT, env=env, timeout=SLOW)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "podman build" in proc.stderr  # no Docker engine here: podman was chosen
    image = run[-1]
    port = free_port()
    name = f"mlflow-pss-test-{port}"
    args = [f"127.0.0.1:{port}:5005" if arg == "5005:5005" else arg for arg in run[2:]]
    started = subprocess.run(["podman", "run", "--detach", "--name", name, *args], capture_output=True, text=True,
                             env=podman, timeout=120)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(url + "/api/health/ready", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True, env=podman)
            assert time.monotonic() < deadline, f"container not ready:\n{logs.stdout}{logs.stderr}"
            time.sleep(0.5)
        assert_scores_the_sample(url)
        user = subprocess.run(["podman", "exec", name, "id", "-u"], capture_output=True, text=True, env=podman)
        assert user.stdout.strip() not in ("", "0")
        health = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, text=True, env=podman)
        assert health.returncode == 0, health.stdout + health.stderr
    finally:
        subprocess.run(["podman", "rm", "--force", name], capture_output=True, env=podman)
        subprocess.run(["podman", "rmi", "--force", image], capture_output=True, env=podman)
