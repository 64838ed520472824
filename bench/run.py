"""Benchmark this server against `mlflow models serve` on the sample models (issue 5).

    .venv/bin/python bench/run.py                  # full run: 3 cases, 3 rounds, writes bench/results.md
    .venv/bin/python bench/run.py --smoke --out /tmp/smoke.md   # CI: ONNX wine only, 1 short round

For every case each server is started afresh in every round (rounds alternate which
server goes first), timed from Popen to its first ready answer, checked to answer 200
with the same predictions as the other, loaded with wrk on 127.0.0.1 at each connection
count, measured (RSS from /proc) and stopped. The table gives the median over rounds.
"""

import argparse
import atexit
import datetime
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
from dataclasses import dataclass
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
    """How to start one server and send it the case's request."""

    name: str
    argv: list  # {port} is replaced by the port
    ready_path: str
    predict_path: str
    body: bytes
    content_type: str


@dataclass
class Case:
    name: str
    title: str
    servers: list
    note: str
    ratios: tuple = (("ours", "MLflow"),)  # (server, peer) pairs compared in the table


def wine_body():
    """The sample's 3 rows without the `quality` label: the 11 features of the models' signature,
    wrapped as MLflow wants it (our plugins read the same wrapping), so both get identical bytes."""
    doc = json.loads(WINE_JSON.read_text())
    keep = [i for i, c in enumerate(doc["columns"]) if c != "quality"]
    split = {"columns": [doc["columns"][i] for i in keep], "data": [[row[i] for i in keep] for row in doc["data"]]}
    return json.dumps({"dataframe_split": split}).encode()


def digit_tensor_body():
    """The sample PNG as MLflow's JSON tensor: what our Keras plugin feeds the model, as `inputs`."""
    import numpy as np
    from PIL import Image

    image = Image.open(DIGIT_PNG).convert("L").resize((28, 28))
    x = np.asarray(image, dtype=np.float32).reshape(1, 28 * 28) / 255.0
    return json.dumps({"inputs": x.tolist()}).encode()


BATCHED = "ours, batched"
BATCH_ARGS = ["--max-batch-size", "16", "--max-batch-time-ms", "2"]
KERAS_PREDICT = ["--plugin-file", str(ROOT / "bench" / "keras_predict_plugin.py"),
                 "--plugin-class", "keras_predict_plugin.Plugin"]


def ours(conf, body, content_type, extra_args, name="ours"):
    argv = [sys.executable, "-m", "mlflow_pluggable_scoring_server.webserver", "--conf", str(conf),
            "--port", "{port}", *extra_args]
    return Server(name, argv, "/api/health/ready", "/api/predict", body, content_type)


def mlflow(model, body):
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager", "local",
            "--host", "127.0.0.1", "--port", "{port}"]
    return Server("MLflow", argv, "/ping", "/invocations", body, "application/json")


def trivial_flask(body):
    """The ceiling: a Flask app answering a constant, under gunicorn with 2 sync workers."""
    argv = [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", "127.0.0.1:{port}",
            "--chdir", str(ROOT / "bench"), "trivial_app:app"]
    return Server("trivial Flask", argv, "/ready", "/predict", body, "application/json")


def make_cases(extra_args, ceiling):
    wine = wine_body()
    onnx = Case("onnx", "ONNX wine (3 rows, JSON)",
                [ours(SAMPLES / "sklearn_wine/onnx/conf.yaml", wine, "application/json", extra_args),
                 mlflow(SAMPLES / "sklearn_wine/onnx/model", wine)],
                "both get the same `dataframe_split` JSON of the 3 sample rows (11 features)",
                (("ours", "MLflow"), ("ours", "trivial Flask")))
    if ceiling:
        onnx.servers.append(trivial_flask(wine))
        onnx.note += "; trivial Flask: `bench/trivial_app.py`, a constant answer, gunicorn with 2 sync workers"
    return {
        "onnx": onnx,
        "forest": Case("forest", "scikit-learn forest wine (3 rows, JSON)",
                       [ours(SAMPLES / "sklearn_wine/conf.yaml", wine, "application/json", extra_args),
                        ours(SAMPLES / "sklearn_wine/conf.yaml", wine, "application/json", extra_args + BATCH_ARGS, BATCHED),
                        mlflow(SAMPLES / "sklearn_wine/model", wine)],
                       "all get the same `dataframe_split` JSON of the 3 sample rows (11 features); "
                       f"batched: `{' '.join(BATCH_ARGS)}`",
                       (("ours", "MLflow"), (BATCHED, "MLflow"), (BATCHED, "ours"))),
        "digits": Case("digits", "Keras digit (1 image)",
                       [ours(SAMPLES / "keras_mnist/conf.yaml", DIGIT_PNG.read_bytes(), "image/png", extra_args),
                        ours(SAMPLES / "keras_mnist/conf.yaml", DIGIT_PNG.read_bytes(), "image/png",
                             extra_args + BATCH_ARGS, BATCHED),
                        mlflow(SAMPLES / "keras_mnist/model", digit_tensor_body())],
                       "ours gets the 28x28 PNG (decoded per request); MLflow cannot take a PNG and gets the "
                       "same pixels as a JSON tensor `{\"inputs\": [[[...28x28 floats...]]]}`; "
                       f"batched: `{' '.join(BATCH_ARGS)}`",
                       (("ours", "MLflow"), (BATCHED, "MLflow"), (BATCHED, "ours"))),
        "digits-predict": Case("digits-predict", "Keras digit (1 image), Keras' predict()",
                               [ours(SAMPLES / "keras_mnist/conf.yaml", DIGIT_PNG.read_bytes(), "image/png",
                                     extra_args + KERAS_PREDICT),
                                ours(SAMPLES / "keras_mnist/conf.yaml", DIGIT_PNG.read_bytes(), "image/png",
                                     extra_args + KERAS_PREDICT + BATCH_ARGS, BATCHED)],
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


def post(url, body, content_type):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def predictions(answer):
    """The numbers of an answer, flat: ours is `[...]`, MLflow's `{"predictions": [{"variable": x}, ...]}`."""
    doc = json.loads(answer)
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


def wrk_load(wrk, url, body, content_type, connections, duration, tmp):
    """Run wrk; returns req/s, p50 and p99 in ms, and the count of failed requests."""
    body_file = Path(tmp) / "body"
    body_file.write_bytes(body)
    script = Path(tmp) / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{content_type}"\n'
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


def python_load(url, body, content_type, connections, duration):
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
                conn.request("POST", path, body, {"Content-Type": content_type})
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
        status, answer = post(predict, server.body, server.content_type)
        if status != 200:
            raise BenchError(f"{server.name}: answered {status} to the case's request: {answer[:300]!r}")
        numbers = predictions(answer) if server.name != "trivial Flask" else None
        if numbers is not None and reference is not None and not same(numbers, reference):
            raise BenchError(f"{server.name}: predictions {numbers[:10]} differ from the other server's {reference[:10]}")
        load = ((lambda c, d: wrk_load(wrk, predict, server.body, server.content_type, c, d, tmp)) if wrk
                else (lambda c, d: python_load(predict, server.body, server.content_type, c, d)))
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
    """The median of the rounds' ratios: each round's two servers ran minutes apart at most,
    so a ratio within a round cancels most of the machine's drift."""
    return statistics.median(a[key] / b[key] if b[key] else float("nan") for a, b in zip(ours, other))


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
        for server, peer in case.ratios:
            if server in rounds and peer in rounds:
                ratios = [ratio(rounds[server], rounds[peer], k) for k, _, _ in cols]
                lines.append(f"| {case.title} | **{server} / {peer}** | " + " | ".join(f"**{x:.2f}x**" for x in ratios)
                             + " | |")
    return "\n".join(lines)


def targets(results, connections):
    """Issue 5's targets, as ratios of the same run; those whose cases or loads did not run are left out."""
    goals = [  # case, server, peer, measure, what, met
        ("onnx", "ours", "MLflow", "rps@8", "ONNX wine: req/s at 8 connections >= 4x MLflow's", lambda x: x >= 4),
        ("onnx", "ours", "MLflow", "p99@8", "ONNX wine: p99 at 8 connections <= 1/5 of MLflow's", lambda x: x <= 0.2),
        ("onnx", "ours", "MLflow", "ready", "ONNX wine: start-to-ready <= half of MLflow's", lambda x: x <= 0.5),
        ("onnx", "ours", "MLflow", "rss_worker", "ONNX wine: one worker's RSS <= 60% of MLflow's", lambda x: x <= 0.6),
        ("digits", BATCHED, "ours", "rps@16", "Keras digits batched: req/s at 16 connections >= 5x unbatched",
         lambda x: x >= 5),
        ("digits-predict", BATCHED, "ours", "rps@16",
         "(the same, with a model call of fixed cost: Keras' predict())", lambda x: x >= 5),
        ("forest", BATCHED, "MLflow", "rps@8", "forest wine batched: req/s at 8 connections >= 3x MLflow's",
         lambda x: x >= 3),
    ]
    rows = []
    for case, server, peer, key, what, ok in goals:
        rounds = results.get(case, {})
        if server in rounds and peer in rounds and int(key.partition("@")[2] or connections[0]) in connections:
            x = ratio(rounds[server], rounds[peer], key)
            rows.append(f"| {what} | {x:.2f} | {'met' if ok(x) else 'not met'} |")
    return "\n".join(["| target (issue 5) | ratio | |", "|---|---:|---|", *rows]) if rows else ""


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


def report(cases, results, args, generator, started):
    raw = []
    for name, rounds in results.items():
        for server, rs in rounds.items():
            for i, r in enumerate(rs):
                raw.append(f"- {cases[name].title}, {server}, round {i + 1}: {fmt_result(r, args.connections)}")
    notes = "\n".join(f"- {cases[n].title}: {cases[n].note}." for n in results)
    parts = [
        "# Benchmark: this server against `mlflow models serve`",
        "",
        f"Command: `{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}` ({time.perf_counter() - started:.0f} s). "
        f"Machine: {machine()}.",
        "",
        f"Load: {generator}, from 127.0.0.1, {args.duration:g} s per connection count after a {args.warmup:g} s "
        f"warm-up; {args.rounds} round(s), each server started afresh in each round, the servers' order alternating "
        "from round to round; medians over the rounds. Ours runs as `python -m mlflow_pluggable_scoring_server.webserver "
        f"--conf <sample conf>{' ' + args.ours_args if args.ours_args else ''}` (gunicorn, sync worker); MLflow as "
        "`mlflow models serve --env-manager local` (FastAPI on uvicorn, 1 worker). Start-to-ready: from starting the "
        "command to the first 200 of `/api/health/ready` (ours) or `/ping` (MLflow). Worker RSS: the largest process "
        "(the one serving); all processes: the sum over the command's process tree (ours: gunicorn master + workers; "
        "MLflow: the CLI + uvicorn; shared pages counted in each), both read from /proc after the load. "
        "Latencies in ms. Server rows: medians over the rounds; ratio rows: the median of each round's ratio.",
        "",
        table(cases, results, args.connections),
        "",
        targets(results, args.connections),
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
    p.add_argument("--warmup", type=int, default=1, help="whole seconds of discarded load before measuring (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per case; medians are reported (default 3)")
    p.add_argument("--connections", default="1,8,16", help="connection counts, comma-separated (default 1,8,16)")
    p.add_argument("--only", default="onnx,forest,digits,digits-predict",
                   help="cases, comma-separated: onnx, forest, digits, digits-predict")
    p.add_argument("--ours-args", default="", help='extra flags for our server, e.g. "--workers 2"')
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip the trivial Flask app measured beside the ONNX case")
    p.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk is there")
    p.add_argument("--smoke", action="store_true", help="CI: ONNX only, 1 round of 2 s loads, no ceiling")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.md"), help="markdown file to write")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.duration, args.warmup, args.ceiling = 1, 2, 1, False
        args.connections = "1,8" if args.connections == p.get_default("connections") else args.connections
        args.only = "onnx" if args.only == p.get_default("only") else args.only
    args.connections = [int(c) for c in args.connections.split(",")]
    args.only = [c.strip() for c in args.only.split(",")]
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally blocks and atexit
    cases = make_cases(shlex.split(args.ours_args), args.ceiling)
    unknown = set(args.only) - set(cases)
    if unknown:
        print(f"error: unknown case(s): {', '.join(sorted(unknown))}; choose among {', '.join(cases)}", file=sys.stderr)
        return 2
    wrk = None if args.python_load else find_wrk()
    generator = "wrk (1 thread, keep-alive)" if wrk else "the Python load generator of bench/run.py (threads, keep-alive)"
    if not wrk and not args.python_load:
        print("wrk is not available: using the Python load generator", file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mlflow-pss-bench-") as tmp:
        try:
            for name in args.only:
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
