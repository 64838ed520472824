"""Benchmark this server against `mlflow models serve` and MLServer on the sample models (issues 5 and 19).

    .venv/bin/python bench/run.py                  # full run: 4 cases, 3 rounds, writes bench/results.md
    .venv/bin/python bench/run.py --smoke --out /tmp/smoke.md   # CI: ONNX wine only, 1 short round

Every server gets the same model and rows in each form its users send for speed (a row of the table
per server and form: MLflow `dataframe_split`, and `inputs` on a tensor-signature copy of the model;
MLServer V2 JSON; ours on its own route and over V2, JSON and binary tensors), with the same number
of workers. For every case each row's server is started afresh in every round (the rows' order
reversed from round to round), timed from Popen to its first ready answer, checked to answer 200
with the same predictions as the first row, loaded with wrk on 127.0.0.1 at each connection count,
measured (RSS from /proc) and stopped. The table gives the median over rounds, and ratios between
the best rows of two servers within the run.
"""

import argparse
import atexit
import datetime
import functools
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "plugin_samples"
WINE_JSON = SAMPLES / "sklearn_wine" / "data" / "predict-wine-quality.json"
DIGIT_PNG = SAMPLES / "keras_mnist" / "data" / "mnist_0_10.png"
START_TIMEOUT = 180  # seconds; a TensorFlow worker on a busy 2-core machine is slow to load
ENV = {
    **os.environ,
    # `mlflow models serve` runs `uvicorn` from PATH: the venv's.
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    "MLFLOW_DISABLE_TELEMETRY": "true",  # no network calls from either server
    "DO_NOT_TRACK": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


# ---- the cases -------------------------------------------------------------------------------

@dataclass
class Server:
    """How to start one server and send it one form of the case's request: a row of the table."""

    name: str
    argv: object  # a list ({port} is replaced by the port), or argv(port, folder): folder is fresh and its own
    ready_path: str
    predict_path: str
    body: bytes
    content_type: str
    headers: dict = field(default_factory=dict)  # sent besides Content-Type
    groups: tuple = ()  # what it is a form of (ratio rows compare each group's best row); default: its name
    prepare: tuple = ()  # called before the rounds, untimed: what its start needs (a model copy, a venv)

    def __post_init__(self):
        self.groups = self.groups or (self.name,)


@dataclass
class Form:
    """One way to send the case's rows: a server's row is named after its server and its form's label."""

    label: str  # "" for our server's own route
    path: str
    body: bytes
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)


def row(server, argv, ready_path, form, groups=(), prepare=()):
    name = f"{server}, {form.label}" if form.label else server
    return Server(name, argv, ready_path, form.path, form.body, form.content_type, form.headers,
                  groups or (server,), prepare)


@dataclass
class Case:
    name: str
    title: str
    servers: list
    note: str
    ratios: tuple = (("ours", "MLflow"),)  # (group, peer group) pairs compared in the table, best row to best row


def wine_rows():
    """The sample's 3 rows without the `quality` label: the 11 features of the models' signature."""
    doc = json.loads(WINE_JSON.read_text())
    keep = [i for i, c in enumerate(doc["columns"]) if c != "quality"]
    return [doc["columns"][i] for i in keep], [[row[i] for i in keep] for row in doc["data"]]


def wine_body():
    """The 3 rows wrapped as MLflow wants them (our plugins read the same wrapping)."""
    columns, rows = wine_rows()
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


@functools.cache
def wine_forms():
    """The same 3 rows in each form a wine server takes, as its users send them for speed."""
    import numpy as np
    import tritonclient.http as triton

    columns, rows = wine_rows()
    table = np.array(rows, dtype=np.float32)
    v2_columns = [{"name": c, "shape": [len(rows), 1], "datatype": "FP32", "data": [r[i] for r in rows]}
                  for i, c in enumerate(columns)]
    tensors = []
    for i, name in enumerate(columns):  # as plugin_samples/sklearn_wine/v2_client.py sends them
        tensors.append(triton.InferInput(name, [len(rows), 1], "FP32"))
        tensors[-1].set_data_from_numpy(table[:, i:i + 1])
    # tritonclient's own request writer: binary inputs, and binary outputs asked for, as its infer() does
    binary, header_length = triton.InferenceServerClient.generate_request_body(tensors)
    split = wine_body()
    return {
        "native": Form("", "/api/predict", split),
        "split": Form("dataframe_split", "/invocations", split),
        "inputs": Form("inputs", "/invocations", json.dumps({"inputs": rows}).encode()),
        "v2-json": Form("V2 JSON", V2_INFER, json.dumps({"inputs": v2_columns}).encode()),
        "v2-binary": Form("V2 binary", V2_INFER, binary, "application/octet-stream",
                          {V2_HEADER_LENGTH: str(header_length)}),
        "v2-tensor": Form("V2 JSON tensor", V2_INFER, json.dumps(
            {"inputs": [{"name": "input-0", "shape": list(table.shape), "datatype": "FP32", "data": rows}]}).encode()),
    }


def digit_tensor_body():
    """The sample PNG as MLflow's JSON tensor: what our Keras plugin feeds the model, as `inputs`."""
    import numpy as np
    from PIL import Image

    image = Image.open(DIGIT_PNG).convert("L").resize((28, 28))
    x = np.asarray(image, dtype=np.float32).reshape(1, 28 * 28) / 255.0
    return json.dumps({"inputs": x.tolist()}).encode()


@functools.cache
def tensor_copy(model, dest):
    """A copy of the MLflow model ``model`` at ``dest``, the same model file, whose signature is one float32
    tensor of all its columns: with it an MLflow user sends `{"inputs": [[...]]}` and MLflow skips pandas."""
    import numpy as np
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    shutil.copytree(model, dest)
    meta = Model.load(Path(dest) / "MLmodel")
    columns = len(meta.signature.inputs.inputs)
    meta.signature = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, columns))]), meta.signature.outputs)
    meta.saved_input_example_info = None  # its example is a table: no longer one
    for example in ("input_example.json", "serving_input_example.json"):
        (Path(dest) / example).unlink(missing_ok=True)
    meta.save(Path(dest) / "MLmodel")


BATCHED = "ours, batched"
PYFUNC = "ours, pyfunc"
MLFLOW_CPU = "MLflow on one CPU"
BATCH_SIZE, BATCH_MS = 16, 2
BATCH_ARGS = ["--max-batch-size", str(BATCH_SIZE), "--max-batch-time-ms", str(BATCH_MS)]
MLSERVER_BATCHED = "MLServer, batched"
KERAS_PREDICT = ["--plugin-file", str(ROOT / "bench" / "keras_predict_plugin.py"),
                 "--plugin-class", "keras_predict_plugin.Plugin"]
V2_NAME = "mlflow-model"  # the model's name in V2 paths: ours by default, MLServer's as we set it
V2_INFER = f"/v2/models/{V2_NAME}/infer"
V2_HEADER_LENGTH = "Inference-Header-Content-Length"
OURS_READY = "/api/health/ready"
# --peers: which servers the cases run; v2 and mlserver only in the wine cases.
PEERS = {"ours": "ours, on its own route /api/predict (batched too where a case is)",
         "v2": "ours over V2, JSON and binary tensors (batched too where a case is)",
         "pyfunc": "ours with the built-in pyfunc plugin on /invocations, fed as MLflow",
         "mlflow": "mlflow models serve, dataframe_split and inputs (tensor-signature copy)",
         "mlserver": "MLServer 1.7.1 + mlserver-mlflow over V2 JSON, columns and tensor (tensor-signature copy)",
         "mlflow-cpu": "mlflow models serve under taskset on one CPU, inputs (1 worker only): what pinning gives MLflow",
         "trivial": "the trivial Flask app beside the ONNX case (the ceiling; --no-ceiling drops it)"}
SMOKE_PEERS = "ours,v2,mlflow"


def ours_argv(source, workers, extra_args):
    return [sys.executable, "-m", "mlflow_pluggable_scoring_server.webserver", *source, "--port", "{port}",
            "--workers", str(workers), *extra_args]


def mlflow_argv(model, workers):
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager", "local",
            "--host", "127.0.0.1", "--port", "{port}", "--workers", str(workers)]


def mlserver_argv(model, workers, batched=False):
    """MLServer in its own venv (bench/mlserver_peer.py), ``workers`` inference processes beside its HTTP one;
    ``batched``: with its adaptive batching, set as ours is."""
    def argv(port, folder):
        from mlserver_peer import mlserver_python, write_folder

        write_folder(folder, model, V2_NAME, port, workers, (BATCH_SIZE, BATCH_MS / 1000) if batched else None)
        return [str(mlserver_python().parent / "mlserver"), "start", str(folder)]
    return argv


def build_mlserver():
    from mlserver_peer import mlserver_python

    mlserver_python()  # built once per machine (about 25 s), never while a server is timed


def trivial_flask(form, workers):
    """The ceiling: a Flask app answering a constant, under gunicorn with as many sync workers as the others."""
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--bind", "127.0.0.1:{port}",
            "--chdir", str(ROOT / "bench"), "trivial_app:app"]
    return Server("trivial Flask", argv, "/ready", "/predict", form.body, form.content_type)


WINE_NOTE = ("the same 3 sample rows (11 features) to each, in its fastest forms. ours: the sample plugin, "
             "`dataframe_split` JSON on `/api/predict`, and over V2 on `" + V2_INFER + "` one FP32 input of shape "
             "[3, 1] per column, as JSON and as binary tensors (tritonclient's request writer, binary outputs); "
             "ours, pyfunc: no plugin code, the built-in pyfunc plugin on `/invocations`, fed as MLflow; MLflow: "
             "`dataframe_split` on the sample model (a signature of 11 float columns), and `{\"inputs\": [[...]]}` "
             "on a copy of it, made in the run's work folder, with the same model file and a signature of one "
             "float32 tensor (-1, 11) (MLflow then skips pandas); MLServer: V2 JSON (it has no binary tensors), "
             "the FP32 columns on the sample model and one FP32 [3, 11] input `input-0` on the tensor copy")


def wine_case(name, title, conf, model, extra_args, workers, peers, work, batched=False):
    """A wine case: each selected peer in each form it takes. Without ``work``, no tensor-signature copy and
    none of the rows that need it."""
    forms = wine_forms()
    tensor_model = Path(work) / f"{name}-tensor-model" if work else None
    servers = []
    for variant, args in [("ours", extra_args)] + ([(BATCHED, extra_args + BATCH_ARGS)] if batched else []):
        for key, peer in (("native", "ours"), ("v2-json", "v2"), ("v2-binary", "v2")):
            if peer in peers:
                groups = (variant, f"{variant}, V2") if peer == "v2" else (variant,)
                servers.append(row(variant, ours_argv(["--conf", str(conf)], workers, args), OURS_READY,
                                   forms[key], groups))
    peer_forms = {  # peer: its name, argv for a model, ready path, the form for the model, for its tensor copy
        "pyfunc": (PYFUNC, lambda m: ours_argv(["--model-uri", str(m)], workers, extra_args), OURS_READY,
                   "split", "inputs", ()),
        "mlflow": ("MLflow", lambda m: mlflow_argv(m, workers), "/ping", "split", "inputs", ()),
        "mlserver": ("MLServer", lambda m: mlserver_argv(m, workers), f"/v2/models/{V2_NAME}/ready",
                     "v2-json", "v2-tensor", (build_mlserver,)),
    }
    copy = functools.partial(tensor_copy, model, tensor_model)
    for peer, (server, argv, ready, column_form, tensor_form, prepare) in peer_forms.items():
        if peer in peers:
            servers.append(row(server, argv(model), ready, forms[column_form], prepare=prepare))
            if work:
                servers.append(row(server, argv(tensor_model), ready, forms[tensor_form], prepare=(copy, *prepare)))
    if batched and "mlserver" in peers and work:
        servers.append(row(MLSERVER_BATCHED, mlserver_argv(tensor_model, workers, batched=True),
                           f"/v2/models/{V2_NAME}/ready", forms["v2-tensor"], prepare=(copy, build_mlserver)))
    if "mlflow-cpu" in peers and work and workers == 1:
        # A reference, not a peer's form: ours keeps its Python threads on one CPU; MLflow can be made to, with taskset.
        taskset = ["taskset", "--cpu-list", str(min(os.sched_getaffinity(0)))]
        servers.append(row(MLFLOW_CPU, taskset + mlflow_argv(tensor_model, workers), "/ping", forms["inputs"],
                           prepare=(copy,)))
    ratios = [("ours", "MLflow"), ("ours, V2", "MLServer"), (PYFUNC, "MLflow"), ("ours", MLFLOW_CPU)]
    if batched:
        ratios += [(BATCHED, "MLflow"), (BATCHED, MLFLOW_CPU), (f"{BATCHED}, V2", MLSERVER_BATCHED), (BATCHED, "ours")]
    note = WINE_NOTE + (f"; batched: `{' '.join(BATCH_ARGS)}`, and MLServer's adaptive batching set alike "
                        f"(`max_batch_size: {BATCH_SIZE}`, `max_batch_time: {BATCH_MS / 1000:g}`) on the tensor copy"
                        if batched else "")
    return Case(name, title, servers, note, tuple(ratios))


def digit_rows(extra_args, workers, peers):
    """Ours, unbatched and batched, on the Keras digit sample, fed its PNG."""
    png = Form("", "/api/predict", DIGIT_PNG.read_bytes(), "image/png")
    conf = ["--conf", str(SAMPLES / "keras_mnist/conf.yaml")]
    variants = (("ours", extra_args), (BATCHED, extra_args + BATCH_ARGS)) if "ours" in peers else ()
    return [row(variant, ours_argv(conf, workers, args), OURS_READY, png) for variant, args in variants]


def make_cases(extra_args, ceiling, workers=1, peers=tuple(PEERS), work=None):
    """The cases, each with the rows of the selected ``peers``; ``work``: a folder for the tensor-signature copies."""
    onnx = wine_case("onnx", "ONNX wine (3 rows)", SAMPLES / "sklearn_wine/onnx/conf.yaml",
                     SAMPLES / "sklearn_wine/onnx/model", extra_args, workers, peers, work)
    if ceiling and "trivial" in peers:
        onnx.servers.append(trivial_flask(wine_forms()["native"], workers))
        onnx.ratios += (("ours", "trivial Flask"),)
        onnx.note += (f"; trivial Flask: `bench/trivial_app.py`, a constant answer, gunicorn with {workers} sync "
                      "worker(s)")
    digits = digit_rows(extra_args, workers, peers)
    if "mlflow" in peers:
        digits.append(row("MLflow", mlflow_argv(SAMPLES / "keras_mnist/model", workers), "/ping",
                          Form("inputs", "/invocations", digit_tensor_body())))
    return {
        "onnx": onnx,
        "forest": wine_case("forest", "scikit-learn forest wine (3 rows)", SAMPLES / "sklearn_wine/conf.yaml",
                            SAMPLES / "sklearn_wine/model", extra_args, workers, peers, work, batched=True),
        "digits": Case("digits", "Keras digit (1 image)", digits,
                       "ours gets the 28x28 PNG (decoded per request); MLflow cannot take a PNG and gets the "
                       "same pixels as a JSON tensor `{\"inputs\": [[[...28x28 floats...]]]}`; "
                       f"batched: `{' '.join(BATCH_ARGS)}`",
                       (("ours", "MLflow"), (BATCHED, "MLflow"), (BATCHED, "ours"))),
        "digits-predict": Case("digits-predict", "Keras digit (1 image), Keras' predict()",
                               digit_rows(extra_args + KERAS_PREDICT, workers, peers),
                               "the digit case's PNG through `bench/keras_predict_plugin.py`: the sample plugin "
                               "calling Keras' `predict()` (about 66 ms a call, as `mlflow.pyfunc` does) instead of "
                               f"`predict_on_batch` (0.7 ms); batched: `{' '.join(BATCH_ARGS)}`",
                               ((BATCHED, "ours"),)),
    }


# ---- processes -------------------------------------------------------------------------------

STARTED = []  # every process group we started, stopped at exit whatever happens


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server, log_dir):
    port = free_port()
    if callable(server.argv):
        argv = server.argv(port, Path(tempfile.mkdtemp(dir=log_dir)))
    else:
        argv = [a.replace("{port}", str(port)) for a in server.argv]
    log = open(Path(log_dir) / f"{server.name.replace(' ', '_')}-{port}.log", "w")
    started = time.perf_counter()
    # A session of its own, so that stopping it stops its workers too.
    proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    STARTED.append(proc)
    return proc, f"http://127.0.0.1:{port}", started


def stop(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    proc.log.close()
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all():
    for proc in list(STARTED):
        stop(proc)


class BenchError(Exception):
    """A server did not start, or answered wrongly: the run is invalid."""


def wait_ready(proc, url, started, timeout=START_TIMEOUT):
    """Seconds from Popen to the first 200 of the readiness endpoint."""
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise BenchError(f"{url}: server exited with status {proc.returncode}; log: {proc.log.name}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - started
        except (OSError, http.client.HTTPException):  # not listening yet, or 503 while the model loads
            pass
        time.sleep(0.05)
    raise BenchError(f"{url}: not ready after {timeout} s; log: {proc.log.name}")


def send(url, body, headers):
    """POST ``body``; returns the status, the answer and its headers."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def post(url, body, content_type):
    status, answer, _ = send(url, body, {"Content-Type": content_type})
    return status, answer


def predictions(answer, headers=None):
    """The numbers of an answer, flat: ours is `[...]`, MLflow's `{"predictions": [{"variable": x}, ...]}`,
    V2's `{"outputs": [{"data": [...]}, ...]}`, or its binary tensors after a JSON header."""
    header_length = (headers or {}).get(V2_HEADER_LENGTH)
    if header_length is not None:
        import tritonclient.http as triton

        result = triton.InferenceServerClient.parse_response_body(answer, header_length=int(header_length))
        return [float(x) for out in result.get_response()["outputs"] for x in result.as_numpy(out["name"]).ravel()]
    doc = json.loads(answer)
    if isinstance(doc, dict) and "outputs" in doc:
        doc = [output["data"] for output in doc["outputs"]]
    out = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            out.append(float(x))

    walk(doc["predictions"] if isinstance(doc, dict) and "predictions" in doc else doc)
    return out


def same(a, b, rel=1e-4, abs_=1e-6):
    return len(a) == len(b) and all(abs(x - y) <= max(abs_, rel * max(abs(x), abs(y))) for x, y in zip(a, b))


def tree(pid):
    """``pid`` and all its descendants, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def rss_mb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---- load generators -------------------------------------------------------------------------

def find_wrk(install=True):
    """wrk's path, installing Debian's package if missing (root); None when it cannot be had."""
    if shutil.which("wrk") or not install:
        return shutil.which("wrk")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk with apt-get ...", file=sys.stderr)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 300}
        try:
            subprocess.run(["apt-get", "update", "-qq"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], **quiet,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired):
            pass
    return shutil.which("wrk")


def wrk_load(wrk, url, body, content_type, connections, duration, tmp, headers=None):
    """Run wrk; returns req/s, p50 and p99 in ms, and the count of failed requests."""
    body_file = Path(tmp) / "body"
    body_file.write_bytes(body)
    script = Path(tmp) / "post.lua"
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in {"Content-Type": content_type, **(headers or {})}.items()]
    script.write_text('wrk.method = "POST"\n' + "\n".join(lines) + "\n"
                      f'local f = assert(io.open("{body_file}", "rb"))\nwrk.body = f:read("*a")\nf:close()\n')
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise BenchError(f"cannot read wrk's output:\n{out}")

    def percentile(p):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # Read errors are not failures: gunicorn's sync worker closes every connection after its answer.
    errors = (int(non2xx.group(1)) if non2xx else 0) + (int(sock.group(1)) + int(sock.group(4)) if sock else 0)
    return {"rps": float(rps.group(1)), "p50": percentile(50), "p99": percentile(99), "errors": errors}


def python_load(url, body, content_type, connections, duration, headers=None):
    """The fallback when wrk cannot be installed: a thread per connection, keep-alive, fixed duration.

    Bounded by the GIL to a few thousand req/s: it flatters neither server, but caps both.
    """
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    deadline = time.perf_counter() + duration
    latencies, errors, lock = [], [0], threading.Lock()

    def client():
        conn, mine, failed = None, [], 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection(host, int(port), timeout=10)
                conn.request("POST", path, body, {"Content-Type": content_type, **(headers or {})})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    failed += 1
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                mine.append(time.perf_counter() - t0)
            except (OSError, http.client.HTTPException):
                failed += 1
                conn = None
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client) for _ in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    elapsed = time.perf_counter() - started
    latencies.sort()
    if not latencies:
        raise BenchError(f"{url}: no request answered")
    at = lambda p: latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e3  # noqa: E731
    return {"rps": len(latencies) / elapsed, "p50": at(50), "p99": at(99), "errors": errors[0]}


# ---- one measurement -------------------------------------------------------------------------

def measure(server, args, wrk, reference, tmp):
    """Start ``server``, check its answer against ``reference`` (a list of numbers, or None),
    load it at every connection count, read its memory, stop it. Returns (results, its answer)."""
    proc, url, started = start(server, tmp)
    try:
        ready = wait_ready(proc, url + server.ready_path, started)
        predict = url + server.predict_path
        status, answer, headers = send(predict, server.body, {"Content-Type": server.content_type, **server.headers})
        if status != 200:
            raise BenchError(f"{server.name}: answered {status} to the case's request: {answer[:300]!r}")
        numbers = predictions(answer, headers) if server.name != "trivial Flask" else None
        if numbers is not None and reference is not None and not same(numbers, reference):
            raise BenchError(f"{server.name}: predictions {numbers[:10]} differ from the first row's {reference[:10]}")
        request = (server.body, server.content_type)
        load = ((lambda c, d: wrk_load(wrk, predict, *request, c, d, tmp, server.headers)) if wrk
                else (lambda c, d: python_load(predict, *request, c, d, server.headers)))
        if args.warmup:
            load(max(args.connections), args.warmup)  # warm-up, discarded: first calls compile, caches fill
        result = {"ready": ready}
        for c in args.connections:
            for key, value in load(c, args.duration).items():
                result[f"{key}@{c}"] = value
        pids = tree(proc.pid)
        sizes = [rss_mb(p) for p in pids]
        result.update(rss_worker=max(sizes), rss_total=sum(sizes), processes=len(pids))
        return result, numbers
    finally:
        stop(proc)


def run_case(case, args, wrk, tmp):
    """Alternate the servers over the rounds; returns {server name: [results per round]}."""
    rounds = {s.name: [] for s in case.servers}
    reference = None
    for i in range(args.rounds):
        order = case.servers if i % 2 == 0 else case.servers[::-1]
        for server in order:
            print(f"[{case.name}] round {i + 1}/{args.rounds}: {server.name} ...", file=sys.stderr, flush=True)
            result, numbers = measure(server, args, wrk, reference, tmp)
            reference = reference if reference is not None else numbers
            rounds[server.name].append(result)
            print(f"[{case.name}]   {fmt_result(result, args.connections)}", file=sys.stderr, flush=True)
    return rounds


# ---- the report ------------------------------------------------------------------------------

def fmt_result(r, connections):
    loads = ", ".join(f"c{c}: {r[f'rps@{c}']:.0f} req/s p50 {r[f'p50@{c}']:.2f} p99 {r[f'p99@{c}']:.2f} ms" for c in connections)
    return f"ready {r['ready']:.2f} s, {loads}, worker RSS {r['rss_worker']:.0f} MB, errors {sum(r[f'errors@{c}'] for c in connections)}"


def median(rounds, key):
    return statistics.median(r[key] for r in rounds)


def ratio(ours, other, key):
    """The median of the rounds' ratios: within a round the two servers ran minutes apart at most,
    so a ratio within a round cancels most of the machine's drift."""
    return statistics.median(a[key] / b[key] if b[key] else float("nan") for a, b in zip(ours, other))


def best(case, rounds, group, connections):
    """The row of ``group`` with the highest mean over the connection counts of its median req/s: the group's
    best form in this run (None when none of its rows ran)."""
    names = [s.name for s in case.servers if group in s.groups and s.name in rounds]
    return max(names, key=lambda n: statistics.mean(median(rounds[n], f"rps@{c}") for c in connections), default=None)


def compared(case, rounds, connections):
    """The ratio rows' pairs of rows: each of the case's pairs of groups, best row to best row, once each."""
    pairs = [(best(case, rounds, a, connections), best(case, rounds, b, connections)) for a, b in case.ratios]
    return list(dict.fromkeys((a, b) for a, b in pairs if a and b))


def columns(connections):
    cols = []
    for c in connections:
        cols += [(f"rps@{c}", f"req/s @{c}", "{:.0f}"), (f"p50@{c}", f"p50 ms @{c}", "{:.2f}"),
                 (f"p99@{c}", f"p99 ms @{c}", "{:.2f}")]
    return cols + [("ready", "start-to-ready s", "{:.2f}"), ("rss_worker", "worker RSS MB", "{:.0f}"),
                   ("rss_total", "all processes RSS MB", "{:.0f}")]


def table(cases, results, connections):
    cols = columns(connections)
    lines = ["| case | server | " + " | ".join(c[1] for c in cols) + " | failed requests |",
             "|---|---|" + "---:|" * len(cols) + "---:|"]
    for name, rounds in results.items():
        case = cases[name]
        medians = {s: {k: median(rs, k) for k, _, _ in cols} for s, rs in rounds.items()}
        for server, m in medians.items():
            failed = sum(r[f"errors@{c}"] for r in rounds[server] for c in connections)
            lines.append(f"| {case.title} | {server} | " + " | ".join(f.format(m[k]) for k, _, f in cols) + f" | {failed} |")
        for server, peer in compared(case, rounds, connections):
            ratios = [ratio(rounds[server], rounds[peer], k) for k, _, _ in cols]
            lines.append(f"| {case.title} | **{server} / {peer}** | " + " | ".join(f"**{x:.2f}x**" for x in ratios)
                         + " | |")
    return "\n".join(lines)


GOALS = [  # issue, case, group, peer group, measure, what, met
    (19, "onnx", "ours", "MLflow", "rps@8", "ONNX wine: req/s at 8 connections >= 3x MLflow's", lambda x: x >= 3),
    (19, "onnx", "ours", "trivial Flask", "rps@8",
     "ONNX wine: req/s at 8 connections >= 80% of the trivial Flask app's", lambda x: x >= 0.8),
    (19, "onnx", PYFUNC, "MLflow", "rps@8", "ONNX wine through pyfunc: req/s at 8 connections >= 2x MLflow's",
     lambda x: x >= 2),
    (19, "forest", PYFUNC, "MLflow", "rps@8", "forest wine through pyfunc: req/s at 8 connections >= 2x MLflow's",
     lambda x: x >= 2),
    (19, "onnx", "ours, V2", "MLServer", "rps@8", "ONNX wine over V2: req/s at 8 connections >= 2x MLServer's",
     lambda x: x >= 2),
    (19, "onnx", "ours, V2", "MLServer", "p99@8", "ONNX wine over V2: p99 at 8 connections <= half of MLServer's",
     lambda x: x <= 0.5),
    (19, "forest", "ours, V2", "MLServer", "rps@8", "forest wine over V2: req/s at 8 connections >= 2x MLServer's",
     lambda x: x >= 2),
    (19, "forest", "ours, V2", "MLServer", "p99@8",
     "forest wine over V2: p99 at 8 connections <= half of MLServer's", lambda x: x <= 0.5),
    (19, "forest", BATCHED, "MLflow", "rps@8", "forest wine batched: req/s at 8 connections >= 5x MLflow's",
     lambda x: x >= 5),
    (5, "onnx", "ours", "MLflow", "p99@8", "ONNX wine: p99 at 8 connections <= 1/5 of MLflow's", lambda x: x <= 0.2),
    (5, "onnx", "ours", "MLflow", "ready", "ONNX wine: start-to-ready <= half of MLflow's", lambda x: x <= 0.5),
    (5, "onnx", "ours", "MLflow", "rss_worker", "ONNX wine: one worker's RSS <= 60% of MLflow's", lambda x: x <= 0.6),
    (5, "digits", BATCHED, "ours", "rps@16", "Keras digits batched: req/s at 16 connections >= 5x unbatched",
     lambda x: x >= 5),
    (5, "digits-predict", BATCHED, "ours", "rps@16", "(the same, with a model call of fixed cost: Keras' predict())",
     lambda x: x >= 5),
]


def targets(cases, results, connections):
    """The issues' targets, as ratios of the same run between the best rows of the groups they compare;
    those whose rows or loads did not run are left out."""
    rows = []
    for issue, case, group, peer, key, what, ok in GOALS:
        rounds = results.get(case, {})
        server, other = (best(cases[case], rounds, g, connections) for g in (group, peer))
        if server and other and int(key.partition("@")[2] or connections[0]) in connections:
            x = ratio(rounds[server], rounds[other], key)
            rows.append(f"| {what} | {issue} | {server} / {other} | {x:.2f} | {'met' if ok(x) else 'not met'} |")
    return "\n".join(["| target | issue | rows compared | ratio | |", "|---|---:|---|---:|---|", *rows]) if rows else ""


def machine():
    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    load = os.getloadavg()
    libs = ", ".join(f"{d} {version(d)}" for d in ("mlflow", "gunicorn", "flask", "flask-restx", "uvicorn", "fastapi",
                                                  "onnxruntime", "scikit-learn", "tensorflow"))
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores ({cpu}), "
            f"{mem:.1f} GiB; load average before the run {load[0]:.2f}; Python {platform.python_version()}; {libs}")


def servers_run(workers, ours_args):
    """How the servers run, for the report: {the peers that run it: how}."""
    ours = f"--workers {workers}{' ' + ours_args if ours_args else ''}"
    return {
        ("ours", "v2", "pyfunc"): f"ours `python -m mlflow_pluggable_scoring_server.webserver --conf <sample conf> "
                                  f"{ours}` (gunicorn, the ScoringWorker of workers.py: its poller reading requests until whole, 32 threads, quick requests answered on its main thread), ready at `{OURS_READY}`",
        ("pyfunc",): "ours, pyfunc: the same with `--model-uri <model>` instead of the conf",
        ("mlflow",): f"MLflow `mlflow models serve --env-manager local --workers {workers}` (FastAPI on uvicorn), "
                     "ready at `/ping`",
        ("mlflow-cpu",): "MLflow on one CPU: the same under `taskset` on the first CPU (our workers keep their "
                         "Python threads on one CPU, see the README's Workers and CPUs; MLflow has no such setting), "
                         "a reference beside the comparisons, never MLflow's best form",
        ("mlserver",): "MLServer 1.7.1 + mlserver-mlflow 1.7.1 in a venv of its own (`bench/mlserver_peer.py`), "
                       f"`parallel_workers: {workers}` (inference processes, beside the process that answers HTTP), "
                       f"ready at `/v2/models/{V2_NAME}/ready`",
        ("trivial",): "trivial Flask: gunicorn sync workers, ready at `/ready`",
    }


def report(cases, results, args, generator, started):
    raw = []
    for name, rounds in results.items():
        for server, rs in rounds.items():
            for i, r in enumerate(rs):
                raw.append(f"- {cases[name].title}, {server}, round {i + 1}: {fmt_result(r, args.connections)}")
    notes = "\n".join(f"- {cases[n].title}: {cases[n].note}." for n in results)
    parts = [
        "# Benchmark: this server against `mlflow models serve` and MLServer",
        "",
        f"Command: `{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}` ({time.perf_counter() - started:.0f} s). "
        f"Machine: {machine()}.",
        "",
        f"Load: {generator}, from 127.0.0.1, {args.duration:g} s per connection count "
        f"{f'after a {args.warmup:g} s warm-up' if args.warmup else 'with no warm-up'}; {args.rounds} round(s), each "
        "row's server started afresh in each round, the rows' order reversed from round to round; medians over the "
        f"rounds. Every server has {args.workers} worker(s): " + "; ".join(
            text for peers, text in servers_run(args.workers, args.ours_args).items() if set(peers) & set(args.peers))
        + ". "
        "Start-to-ready: from starting the command to the first 200 of its readiness endpoint. Worker RSS: the "
        "largest process; all processes: the sum over the command's process tree (shared pages counted in each), "
        "both read from /proc after the load. Latencies in ms. Server rows: medians over the rounds. Ratio rows "
        "compare each side's best form in this run (of a server's rows, the one with the highest mean req/s over "
        "the connection counts), ours first: the median of each round's ratio.",
        "",
        table(cases, results, args.connections),
        "",
        targets(cases, results, args.connections),
        "",
        "Requests:",
        "",
        notes,
        "",
        "Every round (noise: other jobs share this machine):",
        "",
        *raw,
        "",
    ]
    return "\n".join(parts)


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=5, help="whole seconds of load per connection count (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="whole seconds of discarded load before measuring, 0 for none (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per case; medians are reported (default 3)")
    p.add_argument("--connections", default="1,8,16", help="connection counts, comma-separated (default 1,8,16)")
    p.add_argument("--only", default="onnx,forest,digits,digits-predict",
                   help="cases, comma-separated: onnx, forest, digits, digits-predict")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes of every server, ours and the peers alike (default 1)")
    p.add_argument("--peers", help="servers to run, comma-separated (default: all; --smoke: " + SMOKE_PEERS + "): "
                   + "; ".join(f"{k}: {v}" for k, v in PEERS.items()))
    p.add_argument("--ours-args", default="", help='extra flags for our server, e.g. "--request-timeout 10"')
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip the trivial Flask app measured beside the ONNX case")
    p.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk is there")
    p.add_argument("--smoke", action="store_true",
                   help=f"CI: ONNX only, 1 round of 1 s loads, no warm-up, peers {SMOKE_PEERS} (no MLServer, no ceiling)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.md"), help="markdown file to write")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.duration, args.warmup, args.ceiling = 1, 1, 0, False
        args.connections = "1,8" if args.connections == p.get_default("connections") else args.connections
        args.only = "onnx" if args.only == p.get_default("only") else args.only
        args.peers = args.peers or SMOKE_PEERS
    args.peers = [c.strip() for c in (args.peers or ",".join(PEERS)).split(",")]
    args.peers = [peer for peer in args.peers if peer != "trivial" or args.ceiling]
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        p.error(f"unknown peer(s): {', '.join(sorted(unknown))}; choose among {', '.join(PEERS)}")
    args.connections = [int(c) for c in args.connections.split(",")]
    args.only = [c.strip() for c in args.only.split(",")]
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally blocks and atexit
    wrk = None if args.python_load else find_wrk()
    generator = "wrk (1 thread, keep-alive)" if wrk else "the Python load generator of bench/run.py (threads, keep-alive)"
    if not wrk and not args.python_load:
        print("wrk is not available: using the Python load generator", file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mlflow-pss-bench-") as tmp:  # the run's work folder
        cases = make_cases(shlex.split(args.ours_args), args.ceiling, args.workers, args.peers, tmp)
        unknown = set(args.only) - set(cases)
        if unknown:
            print(f"error: unknown case(s): {', '.join(sorted(unknown))}; choose among {', '.join(cases)}",
                  file=sys.stderr)
            return 2
        try:
            for name in args.only:
                for prepare in dict.fromkeys(p for server in cases[name].servers for p in server.prepare):
                    prepare()
                if cases[name].servers:
                    results[name] = run_case(cases[name], args, wrk, tmp)
        except BenchError as e:
            print(f"error: {e}", file=sys.stderr)
            for log in Path(tmp).glob("*.log"):  # the logs go with the temporary folder: show their ends
                print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
            return 1
        finally:
            stop_all()
    text = report(cases, results, args, generator, started)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    failed = sum(r[f"errors@{c}"] for rounds in results.values() for rs in rounds.values() for r in rs
                 for c in args.connections)
    if failed:
        print(f"error: {failed} requests failed under load", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
