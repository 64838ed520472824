"""What start-up costs, step by step: the time and RSS each step of a worker's start adds.

    .venv/bin/python bench/imports.py [--case onnx|forest|digits]

Runs, in one fresh process and in the order our server does them, the master's imports,
the plugin's import, gunicorn, the Flask-RESTX app, the metrics, then the plugin's
load_model; prints the wall time and RSS after each. Then lists the slowest imports of
the whole sequence from `python -X importtime` (cumulative, top-level packages).
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "onnx": ("plugin_samples/sklearn_wine/onnx/plugin.py", "plugin_samples/sklearn_wine/onnx/model"),
    "forest": ("plugin_samples/sklearn_wine/plugin.py", "plugin_samples/sklearn_wine/model"),
    "digits": ("plugin_samples/keras_mnist/plugin.py", "plugin_samples/keras_mnist/model"),
}

# Run in the child: each step is timed and followed by an RSS reading.
STEPS = """
import time, sys
t0 = time.perf_counter()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
def step(name, code):
    t = time.perf_counter()
    exec(code, globals())
    print(f"| {{name}} | {{1000 * (time.perf_counter() - t):.0f}} | {{rss():.0f}} |", flush=True)
print("| step | ms | RSS MB after |\\n|---|---:|---:|")
print(f"| python itself | - | {{rss():.0f}} |")
step("master: import mlflow_pluggable_scoring_server.webserver", "import mlflow_pluggable_scoring_server.webserver as w")
step("master: load the plugin file", "plugin = w.load_plugin({plugin!r}, 'plugin.Plugin')")
step("master: import gunicorn.app.base, workers", "import gunicorn.app.base, mlflow_pluggable_scoring_server.workers")
step("worker: import app (Flask, Flask-RESTX)", "import mlflow_pluggable_scoring_server.app")
step("worker: import prometheus_client, Metrics()", "from mlflow_pluggable_scoring_server.metrics import Metrics, cleanup, prepare; d = prepare(); Metrics()")
step("worker: create_app", "from mlflow_pluggable_scoring_server.scoring import Scorer; from mlflow_pluggable_scoring_server.config import build_settings; "
     "from mlflow_pluggable_scoring_server.app import create_app; s = Scorer(plugin); create_app(s, build_settings(None, plugin={plugin!r}, model_uri={model!r}))")
step("worker: plugin.load_model (its imports, the model)", "s.load({model!r})")
print(f"| total | {{1000 * (time.perf_counter() - t0):.0f}} | {{rss():.0f}} |")
cleanup(*d)
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="onnx", choices=CASES)
    p.add_argument("--top", type=int, default=15, help="how many of the slowest imports to list")
    args = p.parse_args(argv)
    plugin, model = CASES[args.case]
    code = STEPS.format(plugin=plugin, model=model)
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}  # prepare() makes its own
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    if out.returncode:
        print(out.stdout + out.stderr, file=sys.stderr)
        return 1
    print(f"{args.case}: one process doing a worker's start-up, in order\n")
    print(out.stdout)
    # importtime lines: "import time: self [us] | cumulative | imported package", nesting by indent.
    top = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) <= 1:  # top-level imports only: their cumulative time has the rest
            top.append((int(m.group(2)), m.group(4)))
    print("Slowest top-level imports (cumulative ms, `-X importtime`):\n")
    for us, name in sorted(top, reverse=True)[:args.top]:
        print(f"- {us / 1000:.0f} ms {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
