"""What start-up costs, step by step: the time and RSS each step of a worker's start adds.

    .venv/bin/python bench/imports.py [--case onnx|forest|digits]

Runs, in one fresh process and in the order our server does them, the master's imports,
the plugin's import, gunicorn, the Flask-RESTX app, the metrics, the libraries the plugin's
load_model imports, then load_model; prints the wall time and RSS after each. Then lists the slowest imports of
the whole sequence from `python -X importtime` (cumulative, top-level packages).
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# plugin, model, and the libraries its load_model imports (timed apart from the model itself).
CASES = {
    "onnx": ("plugin_samples/sklearn_wine/onnx/plugin.py", "plugin_samples/sklearn_wine/onnx/model",
             ["mlflow", "mlflow.onnx", "onnxruntime"]),
    "forest": ("plugin_samples/sklearn_wine/plugin.py", "plugin_samples/sklearn_wine/model",
               ["mlflow", "sklearn.ensemble", "mlflow.sklearn"]),
    "digits": ("plugin_samples/keras_mnist/plugin.py", "plugin_samples/keras_mnist/model",
               ["mlflow", "tensorflow", "mlflow.keras"]),
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
step("worker: create_app", "from mlflow_pluggable_scoring_server.config import build_settings; "
     "app, r = w.build_app(build_settings(None, plugin={plugin!r}, model_uri={model!r}), [plugin], None); s = r.default.scorer")
for lib in {libs!r}:
    step(f"worker: load_model's import {{lib}}", f"import {{lib}}")
step("worker: plugin.load_model (the rest: reading the model)", "s.load({model!r})")
print(f"| total | {{1000 * (time.perf_counter() - t0):.0f}} | {{rss():.0f}} |")
cleanup(*d)
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="onnx", choices=CASES)
    p.add_argument("--top", type=int, default=25, help="how many of the slowest imports to list")
    p.add_argument("--depth", type=int, default=3, help="how deep in the import tree to list them")
    args = p.parse_args(argv)
    plugin, model, libs = CASES[args.case]
    code = STEPS.format(plugin=plugin, model=model, libs=libs)
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}  # prepare() makes its own
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    if out.returncode:
        print(out.stdout + out.stderr, file=sys.stderr)
        return 1
    print(f"{args.case}: one process doing a worker's start-up, in order\n")
    print(out.stdout)
    # importtime lines: "import time: self [us] | cumulative | imported package", nested by indent.
    top = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) <= 2 * args.depth:
            top.append((int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    print(f"Slowest imports down to {args.depth} levels deep (cumulative ms, under `-X importtime`):\n")
    for us, depth, name in sorted(top, reverse=True)[:args.top]:
        print(f"- {us / 1000:.0f} ms {'  ' * depth}{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
