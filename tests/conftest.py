"""Shared fixtures: the trained sample models, a sqlite Model Registry, real server processes."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "plugin_samples"
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"

WINE = SAMPLES / "sklearn_wine"
WINE_ONNX = WINE / "onnx"
MNIST = SAMPLES / "keras_mnist"
SPARKML = SAMPLES / "sparkml_wine"
WINE_JSON = WINE / "data" / "predict-wine-quality.json"
DIGIT_PNG = MNIST / "data" / "mnist_0_10.png"

START_TIMEOUT = 120  # seconds; a TensorFlow worker takes ~10 s on 2 cores


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A scoring server running as a real process on 127.0.0.1."""

    def __init__(self, argv, port, log_path, env=None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        # A session of its own: stopping the server stops whatever it started (workers, a shell's children).
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    @classmethod
    def cli(cls, args, log_path, env=None):
        """The server started by ``python -m mlflow_pluggable_scoring_server.webserver ARGS`` on a free port."""
        port = free_port()
        return cls([sys.executable, "-m", "mlflow_pluggable_scoring_server.webserver", *args, "--port", str(port)], port, log_path, env)

    def log(self):
        return Path(self.log_path).read_text()

    def wait_ready(self, timeout=START_TIMEOUT, path="/api/health/ready"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # not bound yet, or model still loading
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def wait_workers_ready(self, count, timeout=START_TIMEOUT):
        """Wait until ``count`` workers have loaded their model (each logs a "ready:" line)."""
        deadline = time.monotonic() + timeout
        while len(re.findall(r"ready: \w+ serves ", self.log())) < count:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log()
            time.sleep(0.2)
        return self

    def alive(self):
        return self.proc.poll() is None and requests.get(self.url + "/api/health/live", timeout=5).status_code == 200

    def predict(self, body, content_type="application/json", accept=None, path="/api/predict"):
        headers = {"Content-Type": content_type} if content_type else {}
        if accept:
            headers["Accept"] = accept
        return requests.post(self.url + path, data=body, headers=headers, timeout=60)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def sample_models():
    """Train the sample models with the project's own script if they are missing."""
    subprocess.run([sys.executable, str(SAMPLES / "train_samples.py")], check=True, cwd=ROOT)
    return {"wine": WINE / "model", "onnx": WINE_ONNX / "model", "mnist": MNIST / "model", "sparkml": SPARKML / "model"}


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Start a server with the given CLI args; every server is stopped at the end of the session."""
    servers = []

    def start(*args, env=None, wait=True):
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = Server.cli([str(a) for a in args], log, env=env)
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, sample_models):
    """A sqlite registry with the samples registered by the project's own script."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder}/mlflow.db"
    proc = subprocess.run([sys.executable, str(SAMPLES / "register_samples.py"), "--tracking-uri", uri],
                          capture_output=True, text=True, cwd=folder, check=True)
    runs = dict(re.findall(r"^(\w+): version 1, run (\w+)$", proc.stdout, re.M))
    assert set(runs) == {"sklearn_wine", "onnx_wine", "keras_mnist"}, proc.stdout
    return {"env": {"MLFLOW_TRACKING_URI": uri}, "runs": runs}


@pytest.fixture(scope="session")
def wine_server(sample_models, start_server):
    return start_server("--conf", WINE / "conf.yaml")


@pytest.fixture(scope="session")
def pyfunc_server(sample_models, start_server):
    """The wine model served with no plugin: through mlflow.pyfunc, as `mlflow models serve` serves it."""
    return start_server("--model-uri", sample_models["wine"])


@pytest.fixture(scope="session")
def onnx_server(sample_models, start_server):
    return start_server("--conf", WINE_ONNX / "conf.yaml")


@pytest.fixture(scope="session")
def mnist_server(sample_models, start_server):
    return start_server("--conf", MNIST / "conf.yaml")


@pytest.fixture(scope="session")
def image_server(sample_models, start_server):
    """The Keras digit model served by the built-in image plugin: no plugin code."""
    return start_server("--plugin", "image", "--plugin-option", "size=28x28", "--model-uri", MNIST / "model")


@pytest.fixture(scope="session")
def sparkml_server(sample_models, start_server):
    """The Spark ML wine sample: its worker starts a local Spark (Java) when it loads the model."""
    return start_server("--conf", SPARKML / "conf.yaml")


def run_cli(*args, env=None, timeout=120):
    """Run the server's CLI to completion (for start-up failures); returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "mlflow_pluggable_scoring_server.webserver", *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})},
    )
