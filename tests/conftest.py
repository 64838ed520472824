"""Shared fixtures: the trained sample models, a sqlite Model Registry, the app in-process, real server processes.

Two layers (see the README's Development section):
- ``App``: the server's Flask app built in this process from the same command-line arguments
  as a worker builds it, with a real plugin and a real model, called through Flask's test
  client. It carries the HTTP semantics: errors, media types, auth, health, OpenAPI, batching.
- ``Server``: a real server process on 127.0.0.1, for what only a process shows (gunicorn
  workers, signals, the command line, environments, images, deployments, the README's commands).
Both answer ``predict``, ``get``, ``request``, ``alive`` and ``log`` alike.
"""

import io
import json
import logging
import logging.config
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
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

TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")  # to pin workers apart
START_TIMEOUT = 120  # seconds; a TensorFlow worker takes ~10 s on 2 cores
# The slowest test files, slowest first (seconds in a full run: `--durations=0`, summed per file): pytest-xdist
# hands whole files to its processes in collection order, so these start at once and the quick ones fill in
# the gaps after (in alphabetical order, test_spark.py's 190 s started among the last files).
SLOWEST_FILES = ["test_spark.py", "test_docker_images.py", "test_deployments.py", "test_readme.py", "test_envs.py",
                 "test_fuzz.py", "test_docker.py", "test_lifecycle.py", "test_bench.py", "test_rollout.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


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
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def wait_workers_ready(self, count, timeout=START_TIMEOUT):
        """Wait until ``count`` workers have loaded their model (each logs a "ready:" line)."""
        deadline = time.monotonic() + timeout
        while len(re.findall(r"ready: \w+ serves ", self.log())) < count:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log()
            time.sleep(0.1)
        return self

    def request(self, method, path, data=None, headers=None, timeout=60):
        return requests.request(method, self.url + path, data=data, headers=headers, timeout=timeout)

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def alive(self):
        return self.proc.poll() is None and self.get("/api/health/live").status_code == 200

    def predict(self, body, content_type="application/json", accept=None, path="/api/predict", headers=None):
        return self.request("POST", path, body, predict_headers(content_type, accept, headers))

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def predict_headers(content_type, accept, extra=None):
    headers = {"Content-Type": content_type} if content_type else {}
    if accept:
        headers["Accept"] = accept
    return {**headers, **(extra or {})}


class Answer:
    """A response of the in-process app, read as a ``requests.Response`` is read."""

    def __init__(self, response):
        self.status_code = response.status_code
        self.headers = response.headers
        self.content = response.get_data()

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


@contextmanager
def environment(env):
    """``os.environ`` with ``env`` on top, as a server process started with ``env`` would see it."""
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class App:
    """The server's Flask app in this process, built from ``serve``'s arguments as a gunicorn worker builds it.

    The same settings, plugin, scorer, metrics and auth as in a worker, with a real model;
    requests go through Flask's test client, from any number of threads at once.
    """

    url = "http://localhost"  # the test client's

    def __init__(self, args, env=None, wait=True):
        from mlflow_pluggable_scoring_server.batching import batch_settings
        from mlflow_pluggable_scoring_server.plugin import load_plugin
        from mlflow_pluggable_scoring_server.webserver import args_settings, build_app, parse_args, with_models

        self.env = env
        self._log = io.StringIO()
        self._handler = logging.StreamHandler(self._log)
        self._handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._handler)
        if logging.getLogger().level > logging.INFO:
            logging.getLogger().setLevel(logging.INFO)
        with environment(env):
            settings = args_settings(parse_args([str(a) for a in args]))
            models = settings.served_models()
            plugins = [load_plugin(m.plugin, m.plugin_class, m.plugin_options) for m in models]
            self.settings = with_models(settings, [batch_settings(m, p) for m, p in zip(models, plugins)])
            self.app, self.repository = build_app(self.settings, plugins, self.settings.auth_token())
        self.scorer = self.repository.default.scorer  # the first model's
        self.failure = None
        self._loading = threading.Thread(target=self._load, daemon=True)
        self._loading.start()
        if wait:
            self.wait_ready()

    def _load(self):
        try:
            with environment(self.env):
                for served in self.repository:
                    served.load(self.repository.metrics)
        except Exception as e:  # a worker would exit; here the test that waits for the model fails
            self.failure = e

    def wait_ready(self, timeout=START_TIMEOUT):
        self._loading.join(timeout)
        if self.failure:
            raise AssertionError(f"the model did not load: {self.failure!r}") from self.failure
        assert self.repository.ready, f"models not loaded after {timeout} s"
        return self

    def request(self, method, path, data=None, headers=None, timeout=None):
        from mlflow_pluggable_scoring_server.decoders import limit_image_pixels

        limit_image_pixels(self.settings.max_image_pixels)  # a worker's setting; pytest resets warning filters
        headers = dict(headers or {})
        if data is not None and not isinstance(data, (bytes, str)):  # an iterator of chunks: no Content-Length
            headers["Transfer-Encoding"] = "chunked"
            return Answer(self.app.test_client().open(path, method=method, headers=headers,
                                                      input_stream=io.BytesIO(b"".join(data))))
        return Answer(self.app.test_client().open(path, method=method, data=data, headers=headers))

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def alive(self):
        return self.get("/api/health/live").status_code == 200

    def predict(self, body, content_type="application/json", accept=None, path="/api/predict", headers=None):
        return self.request("POST", path, body, predict_headers(content_type, accept, headers))

    def log(self):
        return self._log.getvalue()

    def stop(self):
        logging.getLogger().removeHandler(self._handler)


@pytest.fixture(scope="session", autouse=True)
def in_the_project_folder():
    """Relative paths (the conf files', the README's) are relative to the project, as for the servers."""
    os.chdir(ROOT)


@pytest.fixture(scope="session")
def sample_models():
    """Train the sample models with the project's own script if they are missing."""
    subprocess.run([sys.executable, str(SAMPLES / "train_samples.py")], check=True, cwd=ROOT)
    return {"wine": WINE / "model", "onnx": WINE_ONNX / "model", "mnist": MNIST / "model", "sparkml": SPARKML / "model"}


@pytest.fixture(scope="session")
def shared_app(sample_models):
    """The app in-process for the given arguments, built once per session: for tests that only read from it."""
    apps = {}

    def get(*args, env=None):
        key = (tuple(map(str, args)), tuple(sorted((env or {}).items())))
        if key not in apps:
            apps[key] = App(args, env=env)
        return apps[key]

    yield get
    for app in apps.values():
        app.stop()


@pytest.fixture
def make_app(sample_models):
    """A new app in-process, of this test's own (to change, to read its log, to watch it load)."""
    apps = []

    def make(*args, env=None, wait=True):
        apps.append(App(args, env=env, wait=wait))
        return apps[-1]

    yield make
    for app in apps:
        app.stop()


def server_starter(tmp_path_factory):
    servers = []

    def start(*args, env=None, wait=True):
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = Server.cli([str(a) for a in args], log, env=env)
        servers.append(server)
        return server.wait_ready() if wait else server

    return start, servers


@pytest.fixture
def start_server(tmp_path_factory, sample_models):
    """Start a server process with the given CLI args; it is stopped at the end of the test."""
    start, servers = server_starter(tmp_path_factory)
    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory, sample_models):
    """A server process for the given CLI args, started once per session: for tests that only read from it."""
    start, servers = server_starter(tmp_path_factory)
    started = {}

    def get(*args, env=None):
        key = (tuple(map(str, args)), tuple(sorted((env or {}).items())))
        if key not in started:
            started[key] = start(*args, env=env)
        return started[key]

    yield get
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory, sample_models):
    """A sqlite registry with the samples registered by the project's own script."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder}/mlflow.db"
    proc = subprocess.run([sys.executable, str(SAMPLES / "register_samples.py"), "--tracking-uri", uri],
                          capture_output=True, text=True, cwd=folder, check=True)
    runs = dict(re.findall(r"^(\w+): version 1, run (\w+)$", proc.stdout, re.M))
    assert set(runs) == {"sklearn_wine", "onnx_wine", "keras_mnist"}, proc.stdout
    return {"env": {"MLFLOW_TRACKING_URI": uri}, "runs": runs}


# The samples in-process, shared by the session: the wine forest, its ONNX export, the Keras digits.
@pytest.fixture(scope="session")
def wine_server(shared_app):
    return shared_app("--conf", WINE / "conf.yaml")


@pytest.fixture(scope="session")
def pyfunc_server(shared_app, sample_models):
    """The wine model served with no plugin: through mlflow.pyfunc, as `mlflow models serve` serves it."""
    return shared_app("--model-uri", sample_models["wine"])


@pytest.fixture(scope="session")
def onnx_server(shared_app):
    return shared_app("--conf", WINE_ONNX / "conf.yaml")


@pytest.fixture(scope="session")
def mnist_server(shared_app):
    return shared_app("--conf", MNIST / "conf.yaml")


@pytest.fixture(scope="session")
def image_server(shared_app, sample_models):
    """The Keras digit model served by the built-in image plugin: no plugin code."""
    return shared_app("--plugin", "image", "--plugin-option", "size=28x28", "--model-uri", MNIST / "model")


@pytest.fixture(scope="session")
def wine_process(shared_server):
    """The wine sample as a real server process, shared by the tests that need one."""
    return shared_server("--conf", WINE / "conf.yaml")


@pytest.fixture(scope="session")
def two_workers(shared_server):
    """The wine sample on two gunicorn workers, both ready: shared by tests that only count."""
    return shared_server("--conf", WINE / "conf.yaml", "--workers", "2").wait_workers_ready(2)


def run_cli(*args, env=None, timeout=120):
    """Run the server's CLI to completion (for start-up failures); returns the CompletedProcess. On a free port unless
    ``args`` name one: the default, 5005, may be another test's (the README's commands use it)."""
    port = () if "--port" in args else ("--port", free_port())
    return subprocess.run(
        [sys.executable, "-m", "mlflow_pluggable_scoring_server.webserver", *map(str, args), *map(str, port)],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})},
    )


def run_main(command, *args, env=None):
    """A command's ``main(argv)`` (``serve``, ``score``, ``check-plugin``: a module of the CLI) run in this process.

    Returns what :func:`run_cli` returns: a CompletedProcess with the exit status and output.
    ``serve`` may only be run so for start-ups that fail before serving.
    """
    import importlib

    from mlflow_pluggable_scoring_server import webserver
    from mlflow_pluggable_scoring_server.cli import COMMANDS

    def must_not_serve(*_):
        raise AssertionError("run_main is for start-ups that fail; this one would serve")

    # A command configures logging for a process of its own, closing every handler there is
    # (pytest's, TensorFlow's) and quieting loggers: the test process keeps its logging as it is.
    ours = [logging.getLogger(name) for name in logging.root.manager.loggerDict if name.startswith("mlflow_pluggable")]
    levels = [(logger, logger.level) for logger in [logging.getLogger(), *ours]]
    make_server, dict_config = webserver.make_server, logging.config.dictConfig
    out, err = io.StringIO(), io.StringIO()
    webserver.make_server, logging.config.dictConfig = must_not_serve, lambda config: None
    try:
        with environment(env), redirect_stdout(out), redirect_stderr(err):
            try:
                status = importlib.import_module(COMMANDS[command][0]).main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors
                status = e.code
    finally:
        webserver.make_server, logging.config.dictConfig = make_server, dict_config
        for logger, level in levels:
            logger.setLevel(level)
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


def serve_main(*args, env=None):
    """``serve``'s ``main(argv)`` in this process, for start-ups that fail before serving."""
    return run_main("serve", *args, env=env)
