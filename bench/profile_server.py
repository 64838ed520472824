"""Where a request's time goes: py-spy on our gunicorn worker (or MLflow's) while wrk loads it.

    .venv/bin/python bench/profile_server.py [--case onnx] [--server ours|mlflow|flask] [--connections 8] [--duration 10]

Needs py-spy (`pip install py-spy`, anywhere: it is a standalone binary; --py-spy PATH) and
wrk. Every sample is charged to the innermost frame that belongs to a stage of the request
path (decoding, the model, encoding, metrics, Flask, gunicorn, ...); the table gives each
stage's share of the worker's busy samples and its microseconds per request.
"""

import argparse
import collections
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: servers, wrk, /proc)

# (stage, pattern on "function (file:line)"), tried on each frame from the innermost outwards.
STAGES = [
    ("model: onnxruntime session.run", r"onnxruntime"),
    ("model: scikit-learn predict", r"[(/]sklearn/"),
    ("model: keras/tensorflow predict", r"[(/](keras|tensorflow)/"),
    ("plugin: decode request (read_split_frame, json, numpy)", r"decoders\.py|read_split_frame"),
    ("plugin: other", r"plugin_samples/"),
    ("encode response (media.encode)", r"mlflow_pluggable_scoring_server/media\.py"),
    ("V2 codec: read the request, write the answer (v2.py)", r"mlflow_pluggable_scoring_server/v2\.py"),
    ("scoring routes (scoring_routes.py: auth, body, errors)", r"mlflow_pluggable_scoring_server/scoring_routes\.py"),
    ("request deadline (signal, setitimer)", r"deadline|setitimer|signal\.py"),
    ("scoring.py (rest: negotiate, Payload)", r"mlflow_pluggable_scoring_server/(scoring|plugin)\.py"),
    ("prometheus metrics", r"prometheus_client|mlflow_pluggable_scoring_server/metrics\.py"),
    ("logging", r"[(/]logging/"),
    ("app.py handlers (predict, auth, hooks)", r"mlflow_pluggable_scoring_server/app\.py"),
    ("Flask-RESTX dispatch", r"flask_restx"),
    ("Flask dispatch (request context, hooks, routing)", r"[(/]flask/"),
    ("werkzeug (routing, request/response objects, headers)", r"[(/]werkzeug/"),
    ("gunicorn: read and parse the request", r"gunicorn/http/(parser|message|unreader|body)\.py"),
    ("gunicorn: environ, write the response", r"gunicorn/http/wsgi\.py|gunicorn/util\.py"),
    # A sync worker closes every connection, then waits for the client's FIN (RFC 9112 9.6).
    ("gunicorn: close_graceful (waits for the client to close)", r"close_graceful"),
    ("gunicorn: waiting for a connection (select)", r"^wait \(.*gunicorn/workers/sync\.py"),
    ("our HTTP reader: llhttp, the request for gunicorn's environ (inline_http.py)", r"inline_http\.py|httptools"),
    ("our worker: peek, read, send on the main thread (workers.py)", r"mlflow_pluggable_scoring_server/workers\.py"),
    ("gunicorn: worker loop (accept, close)", r"gunicorn/"),
    # For --server mlflow:
    ("pandas", r"[(/]pandas/"),
    ("MLflow: input parsing, schema enforcement", r"mlflow/(models|types|pyfunc/utils)"),
    ("MLflow: scoring server, pyfunc", r"mlflow/"),
    ("uvicorn, starlette, FastAPI, asyncio", r"uvicorn|starlette|fastapi|asyncio|anyio|h11"),
]


def cpu_seconds(pids):
    """User + system CPU time of these processes, from /proc: unlike samples, not inflated by waiting for a core."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def stage(stack):
    for frame in reversed(stack):
        for name, pattern in STAGES:
            if re.search(pattern, frame):
                return name
    return "other: " + (stack[-1] if stack else "?")


def self_time(stack):
    return stack[-1] if stack else "?"


def summarise(raw, requests, rate, duration, workers):
    stages, leaves, total = collections.Counter(), collections.Counter(), 0
    for line in raw.splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        stack = [f for f in frames.split(";") if not f.startswith(("process ", "thread "))]
        stages[stage(stack)] += int(count)
        leaves[re.sub(r":\d+\)", ")", self_time(stack))] += int(count)
        total += int(count)
    # Without --idle py-spy drops the samples of a worker waiting (in select, recv): the rest is work.
    busy_us = total / rate / requests * 1e6 if requests else 0
    lines = [f"{requests} requests in {duration} s; {total} samples at {rate} Hz, "
             f"{100 * total / (rate * duration * workers):.0f}% of the worker(s)' wall time: {busy_us:.0f} us per request", "",
             "| stage | share of samples | us per request |", "|---|---:|---:|"]
    for name, n in stages.most_common():
        lines.append(f"| {name} | {100 * n / total:.1f}% | {busy_us * n / total:.0f} |")
    lines += ["", "Innermost functions (self time):", ""]
    lines += [f"- {100 * n / total:.1f}% {name}" for name, n in leaves.most_common(25)]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="onnx", choices=("onnx", "forest", "digits"))
    p.add_argument("--server", default="ours", choices=("ours", "mlflow", "flask"),
                   help="flask: the trivial Flask app of the ONNX case (the ceiling)")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--duration", type=int, default=10, help="seconds of profiled load (default 10)")
    p.add_argument("--row", help='the row of bench/run.py to load, e.g. "ours, V2 binary" (default: the first of'
                   " --server's: ours' own route, MLflow's dataframe_split)")
    p.add_argument("--ours-args", default="", help='extra flags for our server, e.g. "--workers 2"')
    p.add_argument("--idle", action="store_true",
                   help="keep idle samples (waiting in select, recv): shares of wall time, not of busy time")
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second (default 500)")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="py-spy executable")
    p.add_argument("--raw", help="also keep py-spy's collapsed stacks in this file")
    args = p.parse_args(argv)
    wrk = run.find_wrk()
    servers = run.make_cases(shlex.split(args.ours_args), ceiling=True)[args.case].servers
    group = {"ours": "ours", "mlflow": "MLflow", "flask": "trivial Flask"}[args.server]
    server = next(s for s in servers if (s.name == args.row if args.row else group in s.groups))
    with tempfile.TemporaryDirectory(prefix="mlflow-pss-profile-") as tmp:
        proc, url, started = run.start(server, tmp)
        try:
            run.wait_ready(proc, url + server.ready_path, started)
            workers = run.tree(proc.pid)[1:]  # not the first: gunicorn's master, or MLflow's CLI
            predict = url + server.predict_path
            run.wrk_load(wrk, predict, server.body, server.content_type, args.connections, 2, tmp, server.headers)  # warm-up
            raw = Path(args.raw or Path(tmp) / "stacks.txt")
            spies = [subprocess.Popen([args.py_spy, "record", "--pid", str(pid), "--duration", str(args.duration),
                                       "--rate", str(args.rate), "--format", "raw", "--output", f"{raw}.{pid}", "--nonblocking",
                                       *(["--idle"] if args.idle else [])],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in workers]
            cpu = cpu_seconds(workers)
            load = run.wrk_load(wrk, predict, server.body, server.content_type, args.connections, args.duration, tmp,
                                 server.headers)
            cpu = cpu_seconds(workers) - cpu
            for spy in spies:
                spy.wait(timeout=60)
            stacks = "\n".join(Path(f"{raw}.{pid}").read_text() for pid in workers if Path(f"{raw}.{pid}").exists())
            if args.raw:
                raw.write_text(stacks)
        finally:
            run.stop(proc)
    print(f"{args.case}, {args.connections} connections, {len(workers)} worker(s): "
          f"{load['rps']:.0f} req/s, p50 {load['p50']:.2f} ms, p99 {load['p99']:.2f} ms; "
          f"{cpu / (load['rps'] * args.duration) * 1e6:.0f} us of the worker(s)' CPU time per request (from /proc)\n")
    print(summarise(stacks, round(load["rps"] * args.duration), args.rate, args.duration, len(workers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
