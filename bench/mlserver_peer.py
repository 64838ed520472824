"""MLServer 1.7.1 with ``mlserver-mlflow`` serving an MLflow model: the V2 peer that the differential
tests (issue 16) and the benchmark compare this server with.

    from mlserver_peer import start_mlserver        # bench/ on sys.path
    with start_mlserver("plugin_samples/sklearn_wine/model", "wine") as peer:
        requests.post(f"{peer.url}/v2/models/wine/infer", json={...})

MLServer runs from a venv of its own, built once per machine by ``mlserver_python()`` with the
versions of MLflow and of the models' libraries that our venv has, so that both servers load the
same models the same way. Not named ``mlserver.py``: that would shadow the real package.
"""

import contextlib
import functools
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow_pluggable_scoring_server.envs import _create_with_uv
from mlflow_pluggable_scoring_server.locks import exclusive_lock

VERSION = "1.7.1"
# uvloop 0.22 breaks MLServer 1.7.1 (issue 16).
PACKAGES = [f"mlserver=={VERSION}", f"mlserver-mlflow=={VERSION}", "uvloop<0.22"]
# Pinned to our venv's versions: the sample models load as they do in our server.
AS_OURS = ["mlflow", "scikit-learn", "skops", "onnx", "onnxruntime", "pandas", "numpy"]
VENV = Path.home() / ".cache" / "mlflow-pluggable-scoring-server" / f"mlserver-{VERSION}"
SPEC_FILE = "requirements.txt"  # in a complete venv; written last, before the rename
START_TIMEOUT = 180  # seconds; MLServer imports MLflow, then loads the model, on a busy 2-core machine


def requirements():
    return PACKAGES + [f"{name}=={importlib.metadata.version(name)}" for name in AS_OURS]


def mlserver_python():
    """The Python of the MLServer venv, built first if missing or made for other versions of AS_OURS."""
    wanted = "\n".join(requirements()) + "\n"
    spec = VENV / SPEC_FILE
    if not (spec.exists() and spec.read_text() == wanted):
        VENV.parent.mkdir(parents=True, exist_ok=True)
        waiting = functools.partial(print, f"waiting for another process building {VENV}", file=sys.stderr)
        with exclusive_lock(f"{VENV}.lock", waiting):
            if not (spec.exists() and spec.read_text() == wanted):  # not built meanwhile by another process
                _build(wanted)
    return VENV / "bin" / "python"


def _build(wanted):
    """Build in a temporary folder beside VENV, renamed into place when complete: a half-built venv is never used."""
    for stale in VENV.parent.glob(f".{VENV.name}.tmp-*"):  # left by a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = VENV.parent / f".{VENV.name}.tmp-{os.getpid()}"
    print(f"building {VENV} (once per machine)", file=sys.stderr)
    try:
        _create_with_uv(tmp, [], wanted.split())  # a relocatable venv, bytecode compiled
        (tmp / SPEC_FILE).write_text(wanted)
        shutil.rmtree(VENV, ignore_errors=True)  # made for other versions
        os.rename(tmp, VENV)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_folder(folder, model_uri, name, port, workers=0, batch=None):
    """MLServer's settings.json and ``name/model-settings.json`` in ``folder``: the model on 127.0.0.1:``port``;
    ``batch``: (most requests, seconds) for MLServer's adaptive batching (``max_batch_size``, ``max_batch_time``).

    ``workers`` 0 infers in the server process, 1 in one worker process (MLServer's default is one
    per core). Metrics are off; gRPC cannot be switched off: it gets a free port of 127.0.0.1.
    """
    folder = Path(folder)
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_endpoint": None,
                "parallel_workers": workers, "debug": False}
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / name).mkdir()
    model = {"name": name, "implementation": "mlserver_mlflow.MLflowRuntime",
             "parameters": {"uri": str(Path(model_uri).resolve()) if Path(model_uri).exists() else model_uri}}
    if batch:
        model["max_batch_size"], model["max_batch_time"] = batch
    (folder / name / "model-settings.json").write_text(json.dumps(model, indent=2))


@dataclass
class Peer:
    url: str  # http://127.0.0.1:PORT
    name: str
    proc: subprocess.Popen
    log_path: Path

    def log(self):
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def start_mlserver(model_uri, name="mlflow-model", port=None, workers=0, timeout=START_TIMEOUT, env=None):
    """MLServer serving ``model_uri`` as ``name``, ready (server and model); stopped on exit.

    Yields a Peer; its log is in the error raised when MLServer does not get ready.
    """
    python = mlserver_python()
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="mlserver-") as folder:
        write_folder(folder, model_uri, name, port, workers)
        log_path = Path(folder) / "mlserver.log"
        with open(log_path, "w") as log:
            # cwd: MLServer reads a .env there. A session of its own, so stopping it stops its workers.
            proc = subprocess.Popen([str(python.parent / "mlserver"), "start", folder], cwd=folder,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                                         **(env or {})})
        peer = Peer(f"http://127.0.0.1:{port}", name, proc, log_path)
        try:
            _wait_ready(peer, timeout)
            yield peer
        finally:
            _stop(proc)


def _wait_ready(peer, timeout):
    deadline = time.monotonic() + timeout
    paths = ["/v2/health/ready", f"/v2/models/{peer.name}/ready"]
    while paths:
        if peer.proc.poll() is not None:
            raise RuntimeError(f"MLServer exited with status {peer.proc.returncode}:\n{peer.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"MLServer not ready after {timeout} s:\n{peer.log()}")
        try:
            with urllib.request.urlopen(peer.url + paths[0], timeout=2) as r:
                if r.status == 200:
                    paths.pop(0)
                    continue
        except (OSError, urllib.error.HTTPError):  # not listening yet, or 400/503 while the model loads
            pass
        time.sleep(0.1)


def _stop(proc):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


if __name__ == "__main__":  # build the venv and time it: python bench/mlserver_peer.py
    started = time.monotonic()
    print(mlserver_python(), f"{time.monotonic() - started:.1f} s")
