"""Differential: our V2 endpoints against MLServer 1.7.1 with mlserver-mlflow, serving the same models.

MLServer runs from its own venv (bench/mlserver_peer.py, built once per machine); ours is the pyfunc
plugin in-process. Each request goes to both: the same status class, and for a 200 the same outputs
(names, shapes, datatypes, data). Where we differ on purpose (the README lists it: MLServer answers
500 for bad input, has no binary tensors, ignores requested outputs), the test says which way.
"""

import json
import sys

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from conftest import ROOT, WINE_JSON
from test_v2_codecs import WINE_COLUMNS

sys.path.insert(0, str(ROOT / "bench"))
from mlserver_peer import start_mlserver

pytestmark = pytest.mark.slow

NAME = "wine"
ROWS = np.array([row[:11] for row in json.loads(WINE_JSON.read_text())["data"]])


def columns(rows=3, datatype="FP32", shape=lambda rows: [rows, 1], data=lambda column: column.tolist()):
    return [{"name": name, "shape": shape(rows), "datatype": datatype, "data": data(ROWS[:rows, i])}
            for i, name in enumerate(WINE_COLUMNS)]


def doc(inputs, **fields):
    return json.dumps({"inputs": inputs, **fields}).encode()


def binary_request():
    """tritonclient's default: every input as binary data."""
    tensors = []
    for i, name in enumerate(WINE_COLUMNS):
        tensors.append(httpclient.InferInput(name, [3, 1], "FP32"))
        tensors[-1].set_data_from_numpy(ROWS[:, [i]].astype(np.float32))
    body, length = httpclient.InferenceServerClient.generate_request_body(tensors)
    return body, {"Inference-Header-Content-Length": str(length)}


# name: (body, headers, path suffix, the status classes if we differ on purpose: (ours, MLServer's))
REQUESTS = {
    "3 rows": (doc(columns()), {}, "infer", None),
    "1 row": (doc(columns(1)), {}, "infer", None),
    "flat shape [N]": (doc(columns(shape=lambda rows: [rows])), {}, "infer", None),
    "nested data": (doc(columns(data=lambda column: [[v] for v in column.tolist()])), {}, "infer", None),
    "an id": (doc(columns(), id="r-1"), {}, "infer", None),
    "an extra input": (doc(columns() + [{"name": "nope", "shape": [3, 1], "datatype": "FP32", "data": [1, 2, 3]}]),
                       {}, "infer", None),
    "parameters": (doc(columns(), parameters={"alpha": 1}), {}, "infer", None),
    "the output requested": (doc(columns(), outputs=[{"name": "OUTPUT"}]), {}, "infer", None),  # the model's
    "unknown datatype": (doc(columns(datatype="FP128")), {}, "infer", None),
    "not JSON": (b'{"inputs": [', {}, "infer", None),
    "unknown version": (doc(columns()), {}, "versions/7/infer", None),
    # MLServer: 500 for bad input; we: 400 saying why
    "FP64 for float columns": (doc(columns(datatype="FP64")), {}, "infer", (4, 5)),
    "INT64 for float columns": (doc(columns(datatype="INT64", data=lambda column: [int(v) for v in column])), {},
                                "infer", (4, 5)),
    "shape and data disagree": (doc(columns(shape=lambda rows: [rows + 1, 1])), {}, "infer", (4, 5)),
    "an input missing": (doc(columns()[1:]), {}, "infer", (4, 5)),
    "words for FP32": (doc(columns(data=lambda column: ["seven"] * len(column))), {}, "infer", (4, 5)),
    # MLServer reads numbers written as JSON strings; V2 says numbers are JSON numbers
    "numbers as strings for FP32": (doc(columns(data=lambda column: [str(v) for v in column])), {}, "infer", (4, 2)),
    # MLServer ignores requested outputs it does not have (200, every output); we name the ones there are
    "an unknown output requested": (doc(columns(), outputs=[{"name": "nope"}]), {}, "infer", (4, 2)),
    # MLServer has no binary tensor extension: 422
    "binary tensors": (*binary_request(), "infer", (2, 4)),
}


OUTPUT = {"wine": b"output-1", "onnx": b"variable"}  # what each answers (a 1-D array; an ONNX DataFrame column)


@pytest.fixture(scope="module", params=["wine", "onnx"])
def servers(request, sample_models, shared_app):
    model = sample_models[request.param]
    with start_mlserver(model, NAME) as peer:
        yield shared_app("--model-uri", model, "--model-name", NAME), peer, OUTPUT[request.param]


def test_the_same_metadata_and_health(servers):
    ours, peer, _ = servers
    theirs = requests.get(f"{peer.url}/v2/models/{NAME}", timeout=30).json()
    assert ours.get(f"/v2/models/{NAME}").json() == {**theirs, "platform": "mlflow"}  # MLServer's is ""
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{NAME}/ready", "/v2/models/nope/ready",
                 "/v2/models/nope", f"/v2/models/{NAME}/versions/7"):
        assert ours.get(path).status_code == requests.get(peer.url + path, timeout=30).status_code, path


def outputs(body):
    return [(o["name"], o["shape"], o["datatype"], o["data"]) for o in json.loads(body)["outputs"]]


@pytest.mark.parametrize("body, headers, suffix, differ", REQUESTS.values(), ids=REQUESTS)
def test_the_same_answers(servers, body, headers, suffix, differ):
    ours, peer, output = servers
    path, body = f"/v2/models/{NAME}/{suffix}", body.replace(b"OUTPUT", output)
    mine = ours.request("POST", path, body, headers)
    theirs = requests.post(peer.url + path, data=body, headers=headers, timeout=60)
    expected = differ or (theirs.status_code // 100,) * 2
    assert (mine.status_code // 100, theirs.status_code // 100) == expected, (mine.text, theirs.text[:300])
    if mine.status_code == theirs.status_code == 200:
        for (name, shape, datatype, data), (*same, their_data) in zip(outputs(mine.content), outputs(theirs.content),
                                                                        strict=True):
            assert [name, shape, datatype] == same
            np.testing.assert_allclose(data, their_data, rtol=1e-7)
        if b'"id"' in body:
            assert json.loads(mine.content)["id"] == theirs.json()["id"]
