"""The README's images, built by podman on a local Debian base image and run as `docker run`, SageMaker and KServe
run them (slow: minutes). A module of their own, so that they run beside test_docker.py's other tests.

Skipped, saying why, where podman cannot run containers.
"""

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port
from test_docker import (BASE_IMAGE, CA_BUNDLE, DEBIAN_MIRROR, SLOW, assert_scores_as_sagemaker,
                         assert_scores_over_v2, assert_scores_the_sample, readme_docker_blocks)


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


def build_readme_image(build, podman, tmp_path):
    """Run a README docker-build command (podman builds, on the local base image); returns the image's name."""
    assert build.startswith("mlflow-pluggable-scoring-server docker-build ")
    build += f" --base-image {BASE_IMAGE} --context-dir {tmp_path / 'context'}"
    env = {**podman, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{podman['PATH']}"}
    proc = subprocess.run(["bash", "-c", build], capture_output=True, text=True, cwd=ROOT, env=env, timeout=SLOW)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "podman build" in proc.stderr  # no Docker engine here: podman was chosen
    args = shlex.split(build)
    return args[args.index("--docker-image") + 1]


@contextlib.contextmanager
def readme_container(run, podman):
    """A README `docker run` command run by podman, detached, its port published on a free one of 127.0.0.1 only,
    $PWD the project; yields ``(url, name)`` once the server is ready, and removes the container after."""
    assert run.startswith("docker run ")
    args = shlex.split(run.replace("$PWD", str(ROOT)))[2:]
    port = free_port()
    name = f"mlflow-pss-test-{port}"
    args = [f"127.0.0.1:{port}:{arg.split(':')[-1]}" if before == "-p" else arg for before, arg in zip(["", *args], args)]
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
            assert time.monotonic() < deadline, f"container not ready:\n{podman_logs(name, podman)}"
            time.sleep(0.5)
        yield url, name
    finally:
        subprocess.run(["podman", "rm", "--force", name], capture_output=True, env=podman)


def podman_logs(name, podman):
    logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True, env=podman)
    return logs.stdout + logs.stderr


def podman_exec(name, podman, *command):
    return subprocess.run(["podman", "exec", name, *command], capture_output=True, text=True, env=podman)


def assert_healthy(name, podman):
    health = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, text=True, env=podman)
    assert health.returncode == 0, health.stdout + health.stderr


@pytest.mark.slow
def test_readme_image_builds_runs_and_scores(podman, tmp_path, sample_models):
    """The README's wine image, built by podman on a local base image: run as `docker run` runs it, then as SageMaker
    does (`serve`: 8080), its HEALTHCHECK passing both times."""
    blocks = readme_docker_blocks()
    build, run = blocks["docker"]
    image = build_readme_image(build, podman, tmp_path)
    try:
        with readme_container(run, podman) as (url, name):
            assert_scores_the_sample(url)
            assert podman_exec(name, podman, "id", "-u").stdout.strip() not in ("", "0")
            assert_healthy(name, podman)
        (sagemaker,) = blocks["sagemaker"]
        assert sagemaker.endswith(f" {image} serve") and " -p 8080:8080 " in sagemaker
        with readme_container(sagemaker, podman) as (url, name):
            assert_scores_as_sagemaker(url, pyfunc=False)
            assert_healthy(name, podman)
    finally:
        subprocess.run(["podman", "rmi", "--force", image], capture_output=True, env=podman)


@pytest.mark.slow
def test_readme_image_runs_as_kserve_runs_it(podman, tmp_path, sample_models):
    """The README's image with no model inside, run as KServe runs it: the model at /mnt/models, a read-only root
    filesystem, uid 12345, PORT=8080; scored over V2 with tritonclient, its HEALTHCHECK passing, nothing refused."""
    build, run = readme_docker_blocks()["kserve"]
    assert all(flag in run for flag in ("--read-only", "--user 12345", "-e PORT=8080", ":/mnt/models:ro"))
    image = build_readme_image(build, podman, tmp_path)
    try:
        with readme_container(run, podman) as (url, name):
            assert_scores_over_v2(url, "wine")
            assert podman_exec(name, podman, "id", "-u").stdout.strip() == "12345"
            assert podman_exec(name, podman, "touch", "/srv/scoring/x").returncode != 0  # the root is read-only
            assert_healthy(name, podman)
            logs = podman_logs(name, podman)
        assert "serves /mnt/models" in logs and not re.search(r"Read-only file system|Permission denied", logs), logs
    finally:
        subprocess.run(["podman", "rmi", "--force", image], capture_output=True, env=podman)
