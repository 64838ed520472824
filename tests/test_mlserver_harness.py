"""The MLServer 1.7.1 peer (bench/mlserver_peer.py) that the V2 differential tests compare us with.

Asserts only what tests/mlserver_facts.md records and the differential tests rely on: MLServer
gets ready on the wine models, lists the signature's 11 columns as inputs, and answers a JSON
infer (requests and tritonclient) with one output of shape [rows, 1]; it refuses FP64 columns
for a `float` signature (5xx) and tritonclient's default binary tensors (4xx).
"""

import json
import sys

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import ROOT, WINE_JSON

sys.path.insert(0, str(ROOT / "bench"))
from mlserver_peer import start_mlserver

pytestmark = pytest.mark.slow

NAME = "wine"
COLUMNS = json.loads(WINE_JSON.read_text())["columns"][:11]  # the features; `quality` is the label
ROWS = np.array([row[:11] for row in json.loads(WINE_JSON.read_text())["data"]])


@pytest.fixture(scope="module", params=["wine", "onnx"])
def peer(request, sample_models):
    with start_mlserver(sample_models[request.param], NAME) as peer:
        yield peer


def columns(rows, datatype="FP32"):
    """The 11 features of the first ``rows`` sample rows, one V2 input each of shape [rows, 1]."""
    return [{"name": c, "shape": [rows, 1], "datatype": datatype, "data": ROWS[:rows, i].tolist()}
            for i, c in enumerate(COLUMNS)]


def triton_columns(rows, binary_data):
    tensors = []
    for i, c in enumerate(COLUMNS):
        tensors.append(triton.InferInput(c, [rows, 1], "FP32"))
        tensors[-1].set_data_from_numpy(ROWS[:rows, i:i + 1].astype(np.float32), binary_data=binary_data)
    return tensors


def client(peer):
    return triton.InferenceServerClient(peer.url.split("//")[1])


def infer(peer, inputs):
    return requests.post(f"{peer.url}/v2/models/{NAME}/infer", json={"inputs": inputs}, timeout=60)


def test_ready_with_the_signature_columns_as_inputs(peer):
    assert requests.get(f"{peer.url}/v2/health/live", timeout=10).status_code == 200
    meta = requests.get(f"{peer.url}/v2/models/{NAME}", timeout=10).json()
    assert [i["name"] for i in meta["inputs"]] == COLUMNS
    assert {(i["datatype"], tuple(i["shape"])) for i in meta["inputs"]} == {("FP32", (-1, 1))}
    assert len(meta["outputs"]) == 1


@pytest.mark.parametrize("rows", [1, 3])
def test_json_infer_answers_one_output_per_row(peer, rows):
    answer = infer(peer, columns(rows))
    assert answer.status_code == 200, peer.log()[-3000:]
    (output,) = answer.json()["outputs"]
    assert output["shape"] == [rows, 1] and len(output["data"]) == rows

    assert client(peer).is_model_ready(NAME)
    (output,) = client(peer).infer(NAME, triton_columns(rows, binary_data=False)).get_response()["outputs"]
    assert output["shape"] == [rows, 1] and output["data"] == answer.json()["outputs"][0]["data"]


def test_refuses_fp64_columns_and_binary_tensors(peer):
    # MLflow will not narrow float64 to the signature's float: an internal error, as text/plain.
    assert infer(peer, columns(3, "FP64")).status_code == 500
    with pytest.raises(InferenceServerException) as refused:  # binary_data=True: tritonclient's default
        client(peer).infer(NAME, triton_columns(3, binary_data=True))
    assert refused.value.status() == "422"  # the whole body parsed as JSON: no binary tensor extension
