"""Differential: `mlflow models serve` and this server with no plugin, on the same model, answer alike.

MLflow's server is a real process; ours is the app in-process (the same code a worker runs).

Every request form goes to MLflow's /invocations, to ours and to our /api/predict: equal
statuses, equal bodies byte for byte on success, equal error codes on failure, and our
errors never quote the request (a marker string in it must not come back) nor hold a trace.
"""

import io
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests

from conftest import WINE, WINE_JSON, Server, free_port

MARKER = "zqxMARKERqxz"
JSON = "application/json"
INVOCATIONS = WINE / "data" / "invocations-wine.json"
SPLIT = json.loads(INVOCATIONS.read_text())["dataframe_split"]
FRAME = pd.DataFrame(SPLIT["data"], columns=SPLIT["columns"])
RECORDS = FRAME.to_dict(orient="records")


def body(doc):
    return json.dumps(doc).encode()


def with_cell(value):
    """The wine table with its first alcohol value replaced."""
    frame = FRAME.astype(object)
    frame.loc[0, "alcohol"] = value
    return frame


def csv(frame):
    return frame.to_csv(index=False).encode()


def parquet(frame):
    out = io.BytesIO()
    frame.to_parquet(out)
    return out.getvalue()


# (id, body, content type)
WINE_CASES = [
    ("dataframe_split", INVOCATIONS.read_bytes(), JSON),
    ("dataframe_split_charset", INVOCATIONS.read_bytes(), "application/json; charset=utf-8"),
    ("dataframe_split_reordered", body({"dataframe_split": FRAME[FRAME.columns[::-1]].to_dict(orient="split")}), JSON),
    ("dataframe_records", body({"dataframe_records": RECORDS}), JSON),
    ("instances", body({"instances": RECORDS}), JSON),
    ("inputs", body({"inputs": FRAME.to_dict(orient="list")}), JSON),
    ("csv", csv(FRAME), "text/csv"),
    ("csv_charset", csv(FRAME), "text/csv; charset=utf-8"),
    ("parquet", parquet(FRAME), "application/vnd.apache.parquet"),
    # Errors; the marker is where MLflow quotes the request back.
    ("missing_column", body({"dataframe_split": FRAME.drop(columns="alcohol").to_dict(orient="split")}), JSON),
    ("extra_column_named_marker", body({"dataframe_split": FRAME.rename(columns={"alcohol": MARKER}).to_dict(orient="split")}), JSON),
    ("string_value", body({"dataframe_split": with_cell(MARKER).to_dict(orient="split")}), JSON),
    ("csv_string_value", csv(with_cell(MARKER)), "text/csv"),
    ("csv_missing_column", csv(FRAME.drop(columns="alcohol").assign(**{MARKER: 1})), "text/csv"),
    ("broken_json", b'{"dataframe_split": {"columns": ["' + MARKER.encode() + b'"', JSON),
    ("not_utf8", b'{"' + MARKER.encode() + b'": "\xc3\x28"}', JSON),
    ("unknown_key", body({MARKER: RECORDS}), JSON),
    ("two_keys", body({"instances": RECORDS, "inputs": RECORDS}), JSON),
    ("list", body(RECORDS), JSON),
    ("broken_parquet", MARKER.encode() * 10, "application/vnd.apache.parquet"),
    ("latin1", INVOCATIONS.read_bytes(), "application/json; charset=latin-1"),
    ("unknown_parameter", INVOCATIONS.read_bytes(), f"application/json; {MARKER}=1"),
    ("unknown_type", INVOCATIONS.read_bytes(), "text/plain"),
]

PARAMS_MODEL = '''
import mlflow
import pandas as pd


class Scale(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"y": model_input["x"] * params["factor"], "label": params["label"]})


mlflow.models.set_model(Scale())
'''

PARAMS_FRAME = {"columns": ["x"], "data": [[1.0], [2.5]]}
PARAMS_CASES = [
    ("default_params", body({"dataframe_split": PARAMS_FRAME}), JSON),
    ("params", body({"dataframe_split": PARAMS_FRAME, "params": {"factor": 3.0, "label": "tripled"}}), JSON),
    ("inputs_params", body({"inputs": {"x": [4.0]}, "params": {"factor": 0.5}}), JSON),
    ("unknown_param_ignored", body({"dataframe_split": PARAMS_FRAME, "params": {"other": 1}}), JSON),
    ("wrong_param_type", body({"dataframe_split": PARAMS_FRAME, "params": {"factor": MARKER}}), JSON),
    ("params_not_a_dict", body({"dataframe_split": PARAMS_FRAME, "params": [MARKER]}), JSON),
    ("csv_no_params", b"x\n1.0\n2.5\n", "text/csv"),
]


class Pair:
    """`mlflow models serve` and this server (no plugin) on one model."""

    def __init__(self, model, tmp_path_factory, shared_app):
        port = free_port()
        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # MLflow runs `uvicorn`
        argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager", "local",
                "--host", "127.0.0.1", "--port", str(port)]
        self.mlflow = Server(argv, port, tmp_path_factory.mktemp("mlflow") / "mlflow.log", env=env)
        self.ours = shared_app("--model-uri", model)
        self.mlflow.wait_ready(path="/ping")

    def stop(self):
        self.mlflow.stop()


@pytest.fixture(scope="module")
def wine_pair(sample_models, tmp_path_factory, shared_app):
    pair = Pair(sample_models["wine"], tmp_path_factory, shared_app)
    yield pair
    pair.stop()


@pytest.fixture(scope="module")
def params_pair(tmp_path_factory, shared_app):
    """A tiny pyfunc model whose signature has params, saved from code (loadable by any process)."""
    import mlflow
    from mlflow.models import infer_signature

    folder = tmp_path_factory.mktemp("params_model")
    (folder / "scale.py").write_text(PARAMS_MODEL)
    signature = infer_signature(pd.DataFrame({"x": [1.0]}), pd.DataFrame({"y": [1.0], "label": ["a"]}),
                                params={"factor": 2.0, "label": "doubled"})
    mlflow.pyfunc.save_model(folder / "model", python_model=str(folder / "scale.py"), signature=signature,
                             pip_requirements=[f"mlflow=={mlflow.__version__}", "pandas"])
    pair = Pair(folder / "model", tmp_path_factory, shared_app)
    yield pair
    pair.stop()


def assert_same_answer(pair, request_body, content_type):
    headers = {"Content-Type": content_type}
    theirs = requests.post(pair.mlflow.url + "/invocations", data=request_body, headers=headers, timeout=60)
    ours = pair.ours.predict(request_body, content_type, path="/invocations")
    predict = pair.ours.predict(request_body, content_type)
    assert ours.status_code == theirs.status_code, (theirs.text[:500], ours.text[:500])
    assert (predict.status_code, predict.content) == (ours.status_code, ours.content)
    assert ours.headers["Content-Type"] == JSON
    if theirs.status_code == 200:
        assert ours.content == theirs.content
        assert "predictions" in ours.json()
        return
    error = ours.json()
    assert set(error) == {"error_code", "message"} and error["message"]
    assert MARKER not in ours.text and "Traceback" not in ours.text
    if theirs.headers["Content-Type"].startswith(JSON):  # MLflow answers 415 in text/plain, without a code
        assert error["error_code"] == theirs.json()["error_code"]
    else:
        assert error["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert pair.ours.alive()


@pytest.mark.parametrize("request_body, content_type", [c[1:] for c in WINE_CASES], ids=[c[0] for c in WINE_CASES])
def test_wine_model_answers_as_mlflow_does(wine_pair, request_body, content_type):
    assert_same_answer(wine_pair, request_body, content_type)


@pytest.mark.parametrize("request_body, content_type", [c[1:] for c in PARAMS_CASES], ids=[c[0] for c in PARAMS_CASES])
def test_model_with_params_answers_as_mlflow_does(params_pair, request_body, content_type):
    assert_same_answer(params_pair, request_body, content_type)


def test_params_change_the_prediction(params_pair):
    """The params cases above are meaningful: params reach the model, defaults apply without them."""
    def predict(doc):
        return params_pair.ours.predict(body(doc), path="/invocations").json()

    assert predict({"dataframe_split": PARAMS_FRAME}) == {
        "predictions": [{"y": 2.0, "label": "doubled"}, {"y": 5.0, "label": "doubled"}]}
    assert predict({"dataframe_split": PARAMS_FRAME, "params": {"factor": 3.0}})["predictions"][1]["y"] == 7.5


def test_mlflow_quotes_the_request_and_we_do_not(wine_pair):
    """The marker cases are meaningful: MLflow's own answer holds the marker."""
    request_body = dict((c[0], c[1]) for c in WINE_CASES)["string_value"]
    theirs = requests.post(wine_pair.mlflow.url + "/invocations", data=request_body, headers={"Content-Type": JSON})
    ours = wine_pair.ours.predict(request_body, path="/invocations")
    assert theirs.status_code == ours.status_code == 400 and MARKER in theirs.text
    assert MARKER not in ours.text and ours.json()["message"].startswith("Invalid input.")


@pytest.mark.parametrize("path", ["/ping", "/health", "/version"])
def test_health_and_version_endpoints_answer_as_mlflow_does(wine_pair, path):
    theirs = requests.get(wine_pair.mlflow.url + path, timeout=10)
    ours = wine_pair.ours.get(path)
    assert (ours.status_code, ours.content, ours.headers["Content-Type"]) == (
        theirs.status_code, theirs.content, theirs.headers["Content-Type"])
    assert ours.status_code == 200 and ours.content == (b"\n" if path != "/version" else mlflow_version())


def mlflow_version():
    import mlflow

    return mlflow.__version__.encode()


@pytest.mark.parametrize("request_body, content_type, accept", [
    (WINE_JSON.read_bytes(), JSON, None),
    (WINE_JSON.read_bytes(), JSON, "text/csv"),
    (b'{"columns": ["a"]', JSON, None),
    (WINE_JSON.read_bytes(), "text/csv", None),
], ids=["json", "csv_out", "broken", "wrong_type"])
def test_invocations_runs_a_file_plugin_like_predict(wine_server, request_body, content_type, accept):
    predict = wine_server.predict(request_body, content_type, accept)
    invocations = wine_server.predict(request_body, content_type, accept, path="/invocations")
    assert (invocations.status_code, invocations.headers["Content-Type"], invocations.content) == (
        predict.status_code, predict.headers["Content-Type"], predict.content)


@pytest.mark.parametrize("value", ["a b c d e f", "1.2.3", "~!@#$%", "x", "zz top"])
@pytest.mark.parametrize("form", ["json", "csv"])
def test_no_value_of_the_request_comes_back(pyfunc_server, value, form):
    """Values made of one-letter words or punctuation are withheld too, not only word-like ones."""
    if form == "json":
        r = pyfunc_server.predict(body({"dataframe_split": with_cell(value).to_dict(orient="split")}), path="/invocations")
    else:
        r = pyfunc_server.predict(csv(with_cell(value)), content_type="text/csv", path="/invocations")
    assert r.status_code == 400 and set(r.json()) == {"error_code", "message"}
    assert value not in r.text
