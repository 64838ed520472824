"""What N models cost in one server against N servers (one worker each): the memory of their processes.

    .venv/bin/python bench/many_models_memory.py [--rounds 3]

Two sets of three models: the README's plugin_samples/several_models.yaml (the wine sample plugin,
the `image` plugin on the Keras digits, pyfunc on the wine model), and the forest wine model three
times under three names (the sample plugin). Each set is served by one server (one worker) and by
three servers (one worker each, one model each, all running at once); every model is scored 20
times first. Memory is that of every process of the server(s), masters and workers: the pages in
memory, each counted once however many of the processes map it (the physical frames of
/proc/PID/pagemap; needs root), and the sum of their RSS (a page shared by several processes,
Python's and the libraries' code, counted in each: what `ps` and most dashboards add up). Prints a
Markdown table: medians of the rounds, in MB.
"""

import argparse
import atexit
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: servers, /proc)

SEVERAL = run.SAMPLES / "several_models.yaml"
PAGE = os.sysconf("SC_PAGE_SIZE")
WINE_PLUGIN = "plugin_samples/sklearn_wine/plugin.py"  # the servers run in the project's folder
BODIES = {  # a model's plugin -> a request body it takes, and its media type
    "pyfunc": (run.wine_body(), "application/json"),
    "image": (run.DIGIT_PNG.read_bytes(), "image/png"),
    WINE_PLUGIN: (run.WINE_JSON.read_bytes(), "application/json"),
}
MODEL_SETS = {
    "the three samples (wine plugin, image on Keras, pyfunc)": yaml.safe_load(SEVERAL.read_text())["models"],
    "the forest wine three times": [{"name": f"forest-{i}", "model_uri": "plugin_samples/sklearn_wine/model",
                                     "plugin": WINE_PLUGIN} for i in (1, 2, 3)],
}


def mapped(pid):
    """(start, end) of each mapping of ``pid`` that has pages in memory, from /proc/PID/smaps."""
    found, current = [], None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if first == "Rss:" and int(line.split()[1]) > 0:
            found.append(current)
        elif "-" in first and not first.endswith(":"):  # a mapping's header: start-end perms ...
            current = tuple(int(x, 16) for x in first.split("-"))
    return found


def frames(pid):
    """The physical page frames ``pid`` has in memory, from /proc/PID/pagemap (root only: others read zeros)."""
    import numpy as np

    found = []
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for start, end in mapped(pid):
            pagemap.seek(start // PAGE * 8)
            entries = np.frombuffer(pagemap.read((end - start) // PAGE * 8), dtype=np.uint64)
            found.append(entries[entries >> np.uint64(63) == 1] & np.uint64((1 << 55) - 1))  # present: its frame
    return np.concatenate(found)


def memory_mb(pids):
    """(the memory of ``pids`` together, each page counted once; the sum of their RSS), in MB."""
    import numpy as np

    pages = [frames(pid) for pid in pids]
    if not any(p.any() for p in pages):
        raise run.BenchError("page frames read as zeros: run as root (reading /proc/PID/pagemap's frames needs it)")
    return len(np.unique(np.concatenate(pages))) * PAGE / 2**20, sum(len(p) for p in pages) * PAGE / 2**20


def serve(groups, tmp):
    """Start one server per group of models (one worker each), score each model 20 times; returns the
    memory of all their processes (:func:`memory_mb`), then stops them."""
    procs = []
    try:
        for i, models in enumerate(groups):
            conf = Path(tmp) / f"conf-{len(groups)}-{i}.yaml"
            conf.write_text(yaml.safe_dump({"models": models, "workers": 1}))
            server = run.Server(f"{len(groups)}-servers-{i}", [sys.executable, "-m", "mlflow_pluggable_scoring_server.webserver",
                                                             "--conf", str(conf), "--port", "{port}"], "", "", b"", "")
            proc, url, started = run.start(server, tmp)
            procs.append(proc)
            run.wait_ready(proc, url + "/v2/health/ready", started)
            for model in models:
                body, content_type = BODIES[model.get("plugin", "pyfunc")]
                for _ in range(20):
                    status, answer = run.post(f"{url}/api/models/{model['name']}/predict", body, content_type)
                    if status != 200:
                        raise run.BenchError(f"{model['name']}: {status} {answer[:200]!r}")
        time.sleep(1)
        return memory_mb([pid for proc in procs for pid in run.tree(proc.pid)])
    finally:
        for proc in procs:
            run.stop(proc)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    atexit.register(run.stop_all)
    print("| models | served by | memory MB | RSS MB, summed |\n|---|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="mlflow-pss-memory-") as tmp:
        for title, models in MODEL_SETS.items():
            rounds = {"one server": [], "three servers": []}
            for _ in range(args.rounds):
                rounds["one server"].append(serve([models], tmp))
                rounds["three servers"].append(serve([[m] for m in models], tmp))
            for served_by, found in rounds.items():
                memory, rss = (statistics.median(x[k] for x in found) for k in (0, 1))
                print(f"| {title} | {served_by} | {memory:.0f} | {rss:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
