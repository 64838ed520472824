"""CPU time per request, layer by layer, in one process: no HTTP server, no load generator.

    .venv/bin/python bench/layers.py [--case onnx|forest|digits] [--n 3000]

Calls the same request N times at each layer of the request path (the model alone, the
plugin's predict, the Scorer, the Flask app through werkzeug's test client) and prints
the CPU time (time.process_time, so other jobs on the machine do not inflate it) per
call; the difference between layers is what each adds. What gunicorn and the kernel add
on top is bench/profile_server.py's CPU time per request minus the last line.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: the cases' requests)


def per_call(fn, n):
    fn()  # warm-up
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="onnx", choices=("onnx", "forest", "digits"))
    p.add_argument("--n", type=int, default=3000)
    args = p.parse_args(argv)
    sys.path.insert(0, str(run.ROOT))
    from mlflow_pluggable_scoring_server.app import create_app
    from mlflow_pluggable_scoring_server.config import build_settings
    from mlflow_pluggable_scoring_server.metrics import Metrics, cleanup, prepare
    from mlflow_pluggable_scoring_server.plugin import Payload, load_plugin
    from mlflow_pluggable_scoring_server.repository import Repository, ServedModel
    from mlflow_pluggable_scoring_server.scoring import Scorer

    server = run.make_cases([], ceiling=False)[args.case].servers[0]
    conf = server.argv[server.argv.index("--conf") + 1]
    settings = build_settings(conf)
    plugin = load_plugin(settings.plugin, settings.plugin_class)
    served = ServedModel(settings.served_models()[0], plugin, lambda: Scorer(plugin, timeout=settings.request_timeout))
    served.load()
    scorer, repository = served.scorer, Repository([served])
    body, ctype = server.body, server.content_type
    payload = Payload(body, ctype, {})
    rows = [("plugin.predict (decode + model)", lambda: plugin.predict(scorer.model, payload)),
            ("Scorer.score (+ checks, deadline, encode)", lambda: scorer.score(body, ctype, None))]
    if args.case == "onnx":
        from mlflow_pluggable_scoring_server.decoders import read_split_frame

        x = read_split_frame(body, columns=scorer.model.features)
        feed = {scorer.model.input_name: x}
        rows.insert(0, ("onnxruntime session.run alone", lambda: scorer.model.session.run(None, feed)))
        rows.insert(1, ("read_split_frame alone", lambda: read_split_frame(body, columns=scorer.model.features)))
    folder = prepare()
    try:
        metrics = Metrics()
        rows.append(("Metrics.observe alone (one request's counter and histogram)",
                     lambda: metrics.observe("/api/predict", "POST", 200, 0.001)))
        client = create_app(repository, settings, metrics=metrics).test_client()
        rows.append(("the app through Flask's test client (the scoring routes in front of Flask, metrics)",
                     lambda: client.post("/api/predict", data=body, headers={"Content-Type": ctype})))
        client_plain = create_app(repository, settings).test_client()
        rows.append(("the app without metrics",
                     lambda: client_plain.post("/api/predict", data=body, headers={"Content-Type": ctype})))
        from trivial_app import app as trivial

        trivial_client = trivial.test_client()
        rows.append(("baseline: bench/trivial_app.py through the same test client",
                     lambda: trivial_client.post("/predict", data=body, headers={"Content-Type": ctype})))
        print(f"{args.case}: CPU time per call, {args.n} calls each\n\n| layer | us per call |\n|---|---:|")
        for name, fn in rows:
            print(f"| {name} | {per_call(fn, args.n):.0f} |", flush=True)
    finally:
        cleanup(*folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
