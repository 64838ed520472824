"""Reading a model's files: read_model gives what MLflow reads, and a local model needs no MLflow."""

import json
import subprocess
import sys

from conftest import ROOT, WINE_JSON, WINE_ONNX
from mlflow_pluggable_scoring_server.models import read_model

WORKER_WITHOUT_MLFLOW = """
import sys
from mlflow_pluggable_scoring_server.plugin import Payload, load_plugin
plugin = load_plugin("plugin_samples/sklearn_wine/onnx/plugin.py")
model = plugin.load_model("plugin_samples/sklearn_wine/onnx/model")
answer = plugin.predict(model, Payload(open(sys.argv[1], "rb").read(), "application/json"))
print(sorted(name for name in sys.modules if name == "mlflow" or name.startswith("mlflow.")))
print(answer.tolist())
"""


def test_read_model_agrees_with_mlflow(sample_models):
    from mlflow.models import Model

    local = read_model(str(sample_models["onnx"]))
    mlmodel = Model.load(str(sample_models["onnx"]))
    assert local.input_names() == mlmodel.signature.inputs.input_names()
    assert local.flavors == mlmodel.flavors
    assert local.flavor_file("onnx") == str(WINE_ONNX / "model" / "model.onnx")
    assert local.signature["outputs"] == json.loads(mlmodel.signature.outputs.to_json())


def test_read_model_downloads_registry_models(registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["env"]["MLFLOW_TRACKING_URI"])
    local = read_model("models:/onnx_wine@champion")
    assert local.path != str(WINE_ONNX / "model")
    assert local.input_names() == read_model(str(WINE_ONNX / "model")).input_names()
    with open(local.flavor_file("onnx"), "rb") as downloaded, open(WINE_ONNX / "model" / "model.onnx", "rb") as sample:
        assert downloaded.read() == sample.read()


def test_onnx_sample_worker_never_imports_mlflow(sample_models):
    """A worker serving the local ONNX model loads no MLflow: half the memory, seconds sooner."""
    proc = subprocess.run([sys.executable, "-c", WORKER_WITHOUT_MLFLOW, str(WINE_JSON)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    modules, answer = proc.stdout.splitlines()
    assert modules == "[]"
    assert len(json.loads(answer)) == 3
