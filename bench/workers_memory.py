"""What more workers cost in memory: the forest wine sample served with 1 and 4 workers, preloaded or not.

    .venv/bin/python bench/workers_memory.py [--rounds 3] [--workers 1,4]

Each server (master and workers) is started with the sample's conf and scores 40 requests per worker,
sent from 8 connections at once (again until every worker has answered), then the memory of all its
processes is read: PSS (each shared page split between the processes sharing it, from
/proc/PID/smaps_rollup) summed, and the pages in memory counted once however many of the processes
map them (pagemap, needs root; see many_models_memory.py). `--no-preload` is the server before
issue 19: each worker loads its own copy of the forest. Prints a Markdown table of the medians over
the rounds, in MB, and each row's ratio to the 1-worker row of the same mode.
"""

import argparse
import atexit
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: servers, /proc)
from many_models_memory import memory_mb  # noqa: E402

CONF = run.SAMPLES / "sklearn_wine" / "conf.yaml"
PER_WORKER = 40


def pss_mb(pids):
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


def measure(workers, preload, tmp):
    """(PSS summed, pages counted once) of a server with ``workers`` workers, after each scored PER_WORKER requests."""
    flags = ["--workers", str(workers)] + ([] if preload else ["--no-preload"])
    server = run.Server(f"{workers} workers", [sys.executable, "-m", "mlflow_pluggable_scoring_server.webserver",
                                               "--conf", str(CONF), "--port", "{port}", *flags], "", "", b"", "")
    proc, url, started = run.start(server, tmp)
    try:
        run.wait_ready(proc, url + "/api/health/ready", started)
        time.sleep(1)  # the other workers: ready once every one of them is
        seen = set()  # the workers that answered /api/status: each has scored too, almost surely

        def ask(_):
            status, _ = run.post(url + "/api/predict", run.WINE_JSON.read_bytes(), "application/json")
            if status != 200:
                raise run.BenchError(f"predict answered {status}")
            with urllib.request.urlopen(url + "/api/status") as r:
                seen.add(json.loads(r.read())["system"]["pid"])

        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                list(pool.map(ask, range(PER_WORKER * workers)))
                if len(seen) >= workers:
                    break
        time.sleep(1)
        pids = run.tree(proc.pid)
        return pss_mb(pids), memory_mb(pids)[0]
    finally:
        run.stop(proc)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", default="1,4", help="comma-separated worker counts, the first the baseline")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    atexit.register(run.stop_all)
    print("| mode | workers | PSS MB, summed | ratio | pages counted once, MB | ratio |\n|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="mlflow-pss-workers-") as tmp:
        for preload in (True, False):
            found = {n: [measure(n, preload, tmp) for _ in range(args.rounds)] for n in counts}
            medians = {n: [statistics.median(x[k] for x in found[n]) for k in (0, 1)] for n in counts}
            base = medians[counts[0]]
            for n in counts:
                pss, once = medians[n]
                print(f"| {'preloaded' if preload else '--no-preload'} | {n} | {pss:.0f} | {pss / base[0]:.2f}x | {once:.0f} |"
                      f" {once / base[1]:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
