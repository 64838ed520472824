"""The Open Inference Protocol (V2) endpoints, spoken by tritonclient.http: its request writer and response
reader in-process, its own client against a real server.

In-process (conftest's apps) for every kind of model: the wine model through pyfunc (a column signature),
the wine and ONNX sample plugins (``preprocess_tensors``, batched too), the Keras digits through pyfunc
(a tensor signature), a pyfunc model saved here with string, double and long columns and ``params``, the
``image`` plugin and a 2020 plugin (request bodies in one BYTES input). The kserve SDK is not tested: it
cannot be installed beside this venv's pandas 3. MLServer's answers: tests/test_v2_mlserver.py.
"""

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as httpclient
from conftest import (
    DIGIT_PNG,
    MNIST,
    TEST_PLUGINS,
    WINE,
    WINE_JSON,
    WINE_ONNX,
    environment,
)
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image
from test_batching import batches, merged_since
from test_metrics import samples, total
from test_v2_codecs import WINE_COLUMNS, WINE_METADATA, triton_body, triton_result
from tritonclient.utils import InferenceServerException

from mlflow_pluggable_scoring_server import __version__

NAME = "mlflow-model"  # the default name
ROWS = np.array([row[:11] for row in json.loads(WINE_JSON.read_text())["data"]], np.float32)
WINE_SPLIT = json.dumps({"dataframe_split": {"columns": WINE_COLUMNS, "data": ROWS.tolist()}}).encode()  # for pyfunc
SECRET = "31337"  # planted in values of bad requests: no answer may quote it
HEADER_LENGTH = "Inference-Header-Content-Length"


def wine_columns(rows=ROWS, dtype=np.float32):
    """The wine features as V2 wants them for the wine model's signature: one [N, 1] input per column."""
    return {name: rows[:, [i]].astype(dtype) for i, name in enumerate(WINE_COLUMNS)}


def infer(server, arrays, binary=True, name=NAME, version=None, **kwargs):
    """POST these named arrays as tritonclient writes them (binary tensors or JSON) to the model's infer endpoint."""
    body, header_length = triton_body(arrays, binary, **kwargs)
    return post(server, body, header_length, name, version)


def post(server, body, header_length=None, name=NAME, version=None, headers=None):
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    headers = {**({HEADER_LENGTH: str(header_length)} if header_length is not None else {}), **(headers or {})}
    return server.request("POST", path, body, headers)


def result(answer):
    """tritonclient's InferResult for a 200 answer."""
    assert answer.status_code == 200, answer.text
    return triton_result(answer.content, answer.headers)


def predictions(server, body, content_type="application/json"):
    """What /api/predict answers for the same data: the reference for V2's answers."""
    answer = server.predict(body, content_type=content_type)
    assert answer.status_code == 200, answer.text
    found = answer.json()
    return np.asarray(found["predictions"] if isinstance(found, dict) else found)


def assert_v2_error(answer, status, *fragments):
    """An error in V2's shape: ``{"error": one line}``, quoting no planted value."""
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    assert SECRET not in answer.text and "Traceback" not in answer.text
    for fragment in fragments:
        assert fragment in body["error"]


# --- health, readiness, metadata, names and versions


def test_server_metadata_live_and_ready(pyfunc_server):
    assert pyfunc_server.get("/v2").json() == {"name": "mlflow-pluggable-scoring-server", "version": __version__,
                                               "extensions": ["binary_tensor_data"]}
    assert pyfunc_server.get("/v2/health/live").json() == {"live": True}
    assert pyfunc_server.get("/v2/health/ready").json() == {"ready": True}
    ready = pyfunc_server.get(f"/v2/models/{NAME}/ready")
    assert ready.status_code == 200 and ready.json() == {"name": NAME, "ready": True}


def test_the_wine_models_metadata_is_its_signature_as_mlserver_maps_it(pyfunc_server):
    metadata = pyfunc_server.get(f"/v2/models/{NAME}").json()
    # MLServer's platform is "", ours says what serves the model
    assert metadata == {**WINE_METADATA, "name": NAME, "platform": "mlflow"}


GATED_PLUGIN = '''
import threading

from mlflow_pluggable_scoring_server.plugins.pyfunc import PyfuncPlugin


class Plugin(PyfuncPlugin):
    """pyfunc, loading its model only once the test opens the gate."""

    gate = threading.Event()

    def load_model(self, model_uri):
        self.gate.wait(60)
        return super().load_model(model_uri)
'''


def test_503_until_the_model_is_loaded_then_200(make_app, registry, tmp_path):
    (tmp_path / "gated.py").write_text(GATED_PLUGIN)
    app = make_app("--plugin", tmp_path / "gated.py", "--model-uri", "models:/sklearn_wine/1", env=registry["env"],
                   wait=False)
    assert app.get("/v2/health/live").json() == {"live": True}
    ready = app.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    # the registry version is not known before the load: a version is not refused (404) but waited for (503)
    for path in ("/v2/models/sklearn_wine/ready", "/v2/models/sklearn_wine/versions/1/ready"):
        assert app.get(path).status_code == 503 and app.get(path).json() == {"name": "sklearn_wine", "ready": False}
    for path in ("/v2/models/sklearn_wine", "/v2/models/sklearn_wine/versions/1"):
        assert_v2_error(app.get(path), 503, "the model is still loading")
    assert_v2_error(infer(app, wine_columns(), name="sklearn_wine"), 503, "the model is still loading")
    assert_v2_error(app.get("/v2/models/nope/ready"), 404)

    app.scorer.plugin.gate.set()
    with environment(registry["env"]):  # as in a worker: the registry is read when the version is looked up
        app.wait_ready()
    for path in ("/v2/health/ready", "/v2/models/sklearn_wine/ready", "/v2/models/sklearn_wine/versions/1/ready"):
        assert app.get(path).status_code == 200
    assert result(infer(app, wine_columns(), name="sklearn_wine", version=1)).get_response()["model_version"] == "1"


def test_a_registered_model_is_served_under_its_name_and_version(make_app, registry):
    app = make_app("--model-uri", "models:/sklearn_wine@champion", env=registry["env"])
    metadata = app.get("/v2/models/sklearn_wine/versions/1").json()
    assert (metadata["name"], metadata["versions"]) == ("sklearn_wine", ["1"])
    response = result(infer(app, wine_columns(), name="sklearn_wine", request_id="r1")).get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("sklearn_wine", "1", "r1")
    for path in ("/v2/models/sklearn_wine/versions/2", "/v2/models/sklearn_wine/versions/2/ready"):
        assert_v2_error(app.get(path), 404, "no such version here; it is served at version 1")
    assert_v2_error(infer(app, wine_columns(), name="sklearn_wine", version=2), 404)
    assert_v2_error(infer(app, wine_columns()), 404, "no such model here")  # not mlflow-model


def test_the_metadata_is_the_loaded_versions_when_the_alias_has_moved(make_app, table_model_path, tmp_path):
    from mlflow import MlflowClient

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    client.create_registered_model("wine")
    loaded, later = (client.create_model_version("wine", str(path)).version for path in (WINE / "model", table_model_path))
    client.set_registered_model_alias("wine", "champion", loaded)
    app = make_app("--plugin", WINE / "plugin.py", "--model-uri", "models:/wine@champion", env=env)
    client.set_registered_model_alias("wine", "champion", later)
    with environment(env):  # as in a worker: the signature is read from the registry when first asked for
        metadata = app.get("/v2/models/wine").json()
    assert metadata["versions"] == [str(loaded)] and [i["name"] for i in metadata["inputs"]] == WINE_COLUMNS


def test_model_name_flag_and_unknown_names_or_versions(shared_app):
    app = shared_app("--model-uri", WINE / "model", "--model-name", "wine")
    assert app.get("/v2/models/wine").json()["versions"] == []
    response = result(infer(app, wine_columns(), name="wine")).get_response()
    assert response["model_name"] == "wine" and "model_version" not in response  # no registry version
    for path in (f"/v2/models/{NAME}", f"/v2/models/{SECRET}/ready", f"/v2/models/{SECRET}"):
        assert_v2_error(app.get(path), 404, "no such model here")
    for path in ("/v2/models/wine/versions/1", "/v2/models/wine/versions/1/ready"):
        assert_v2_error(app.get(path), 404, "served at no registry version")
    assert_v2_error(infer(app, wine_columns(), name=SECRET), 404)
    assert_v2_error(infer(app, wine_columns(), name="wine", version=SECRET), 404)


# --- inference on each kind of model


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_wine_through_pyfunc(pyfunc_server, binary):
    answer = infer(pyfunc_server, wine_columns(), binary, request_id="req-7")
    found = result(answer)
    assert found.get_response()["id"] == "req-7" and found.get_response()["model_name"] == NAME
    # no outputs requested: tritonclient asks for every output as binary data
    assert answer.headers["Content-Type"] == "application/octet-stream"
    (output,) = found.get_response()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output-1", "FP64", [3, 1])
    np.testing.assert_array_equal(found.as_numpy("output-1")[:, 0], predictions(pyfunc_server, WINE_SPLIT))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_requested_outputs_come_as_asked(pyfunc_server, binary):
    answer = infer(pyfunc_server, wine_columns(), request_id="x",
                   outputs=[httpclient.InferRequestedOutput("output-1", binary_data=binary)])
    assert (HEADER_LENGTH in answer.headers) == binary
    assert ("data" in result(answer).get_output("output-1")) != binary
    assert_v2_error(infer(pyfunc_server, wine_columns(), outputs=[httpclient.InferRequestedOutput("output-0")]), 400,
                    "output 'output-0' was requested; this model answers with 'output-1'")


@pytest.fixture(scope="module")
def samples_apps(wine_server, onnx_server, shared_app):
    """The wine and ONNX sample plugins, unbatched and batched by 4."""
    batched = shared_app("--conf", WINE_ONNX / "conf.yaml", "--max-batch-size", "4", "--max-batch-time-ms", "20")
    return {"wine sample": wine_server, "onnx sample": onnx_server, "onnx batched": batched}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("sample", ["wine sample", "onnx sample", "onnx batched"])
def test_sample_plugins_take_one_input_per_column(samples_apps, sample, binary):
    app = samples_apps[sample]
    expected = predictions(app, WINE_JSON.read_bytes())
    for dtype in (np.float32, np.float64):  # the plugins cast what they get
        found = result(infer(app, wine_columns(dtype=dtype), binary)).as_numpy("output-1")
        assert found.shape == (3, 1)
        np.testing.assert_allclose(found[:, 0], expected, rtol=1e-6)
    assert_v2_error(infer(app, {**wine_columns(), "alcohol": np.full((3, 1), np.nan, np.float32)}), 400,
                    "missing (NaN) or infinite values")
    del_alcohol = {k: v for k, v in wine_columns().items() if k != "alcohol"}
    assert_v2_error(infer(app, del_alcohol), 400, "missing inputs: alcohol")


def test_v2_requests_share_model_calls_when_batching(samples_apps):
    batched, unbatched = samples_apps["onnx batched"], samples_apps["onnx sample"]
    requests = [wine_columns(ROWS[i % 3:i % 3 + 1 + i % 2]) for i in range(24)]  # 1 or 2 rows each
    before = batches(batched)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda arrays: infer(batched, arrays), requests))
    for arrays, answer in zip(requests, answers):
        np.testing.assert_array_equal(result(answer).as_numpy("output-1"),
                                      result(infer(unbatched, arrays)).as_numpy("output-1"))
    merged_since(batched, before, len(requests))


def test_unbatched_v2_requests_are_counted_as_model_calls(wine_server):
    before = total(samples(wine_server), "scoring_batch_size_count")
    assert infer(wine_server, wine_columns()).status_code == 200
    assert total(samples(wine_server), "scoring_batch_size_count") == before + 1


def digit_pixels(count):
    pixels = np.asarray(Image.open(DIGIT_PNG).convert("L"), np.float32).reshape(1, 784) / 255
    return np.repeat(pixels, count, axis=0)


@pytest.fixture(scope="module")
def keras_pyfunc(shared_app):
    return shared_app("--model-uri", MNIST / "model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_tensor_signature_through_pyfunc(keras_pyfunc, binary):
    metadata = keras_pyfunc.get(f"/v2/models/{NAME}").json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [("input-0", "FP32", [-1, 784])]
    expected = predictions(keras_pyfunc, json.dumps({"inputs": digit_pixels(1).tolist()}).encode())
    for name in ("input-0", "pixels"):  # one unnamed tensor: MLServer takes any name
        found = result(infer(keras_pyfunc, {name: digit_pixels(2)}, binary)).as_numpy("output-1")
        assert found.shape == (2, 10)
        np.testing.assert_allclose(found, np.repeat(expected, 2, axis=0), rtol=1e-5)
    assert_v2_error(infer(keras_pyfunc, {"input-0": digit_pixels(1), "extra": np.ones(1, np.float32)}), 400,
                    "this model takes one input tensor; the request has 2")
    # MLflow does not narrow float64 to the signature's float32
    assert_v2_error(infer(keras_pyfunc, {"input-0": digit_pixels(1).astype(np.float64)}), 400,
                    "dtype of input float64 does not match expected dtype float32")


class TableModel(mlflow.pyfunc.PythonModel):
    """Answers each row's string length, x * alpha, n + 1, and the params it got."""

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"name_len": model_input["name"].str.len(), "x_alpha": model_input["x"] * params["alpha"],
                             "n1": model_input["n"] + 1, "params": json.dumps(params, sort_keys=True)})


@pytest.fixture(scope="module")
def table_model_path(tmp_path_factory):
    """A pyfunc model of string, double and long columns with params; ``timeout``, ``priority`` and
    ``binary_data_output`` are params too, which the protocol's parameters of those names must not set."""
    path = tmp_path_factory.mktemp("table") / "model"
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "name"), ColSpec("double", "x"), ColSpec("long", "n")]),
        outputs=Schema([ColSpec("long", "name_len"), ColSpec("double", "x_alpha"), ColSpec("long", "n1"),
                        ColSpec("string", "params")]),
        params=ParamSchema([ParamSpec("alpha", "double", 1.0), ParamSpec("timeout", "long", 0),
                            ParamSpec("priority", "long", 0), ParamSpec("binary_data_output", "boolean", False)]))
    mlflow.pyfunc.save_model(path, python_model=TableModel(), signature=signature, pip_requirements=["mlflow"])
    return path


@pytest.fixture(scope="module")
def table_model(table_model_path, shared_app):
    return shared_app("--model-uri", table_model_path)


def table(names=("é", "abc")):
    return {"name": np.array([n.encode() for n in names], dtype=object).reshape(-1, 1),
            "x": np.array([1.5, -2.0]), "n": np.array([[7], [2**40]])}


DEFAULT_PARAMS = {"alpha": 1.0, "binary_data_output": False, "priority": 0, "timeout": 0}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_strings_doubles_longs_and_params_through_pyfunc(table_model, binary):
    metadata = table_model.get(f"/v2/models/{NAME}").json()
    assert [(i["name"], i["datatype"], i["shape"], i["parameters"]["content_type"]) for i in metadata["inputs"]] == [
        ("name", "BYTES", [-1, 1], "str"), ("x", "FP64", [-1, 1], "np"), ("n", "INT64", [-1, 1], "np")]
    assert [o["datatype"] for o in metadata["outputs"]] == ["INT64", "FP64", "INT64", "BYTES"]

    found = result(infer(table_model, table(), binary))
    assert [o["name"] for o in found.get_response()["outputs"]] == ["name_len", "x_alpha", "n1", "params"]
    assert found.as_numpy("name_len").tolist() == [[1], [3]]  # "é" arrived as one character: UTF-8 decoded
    assert found.as_numpy("x_alpha").tolist() == [[1.5], [-2.0]] and found.as_numpy("n1").tolist() == [[8], [2**40 + 1]]
    assert json.loads(found.as_numpy("params")[0, 0]) == DEFAULT_PARAMS  # binary_data_output True was not a param

    # the request's parameters are the params, but for the protocol's own (tritonclient's timeout and priority)
    found = result(infer(table_model, table(), binary, parameters={"alpha": 2.0}, timeout=5, priority=3))
    assert found.as_numpy("x_alpha").tolist() == [[3.0], [-4.0]]
    assert json.loads(found.as_numpy("params")[0, 0]) == {**DEFAULT_PARAMS, "alpha": 2.0}


def test_a_bad_param_value_is_not_quoted(table_model):
    assert_v2_error(infer(table_model, table(), parameters={"alpha": f"x{SECRET}"}), 400,
                    "Failed to validate type and shape for 'alpha'")


@pytest.mark.parametrize("count", [1, 2])
def test_the_image_plugin_takes_encoded_images_in_a_bytes_input(image_server, count):
    metadata = image_server.get(f"/v2/models/{NAME}").json()
    # what this plugin takes (request bodies), not the model's signature (784 floats)
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "BYTES", "shape": [-1],
                                   "parameters": {"content_type": "base64"}}]  # in JSON: base64 text
    expected = predictions(image_server, DIGIT_PNG.read_bytes(), "image/png")
    images = np.array([DIGIT_PNG.read_bytes()] * count, dtype=object)
    found = result(infer(image_server, {"images": images})).as_numpy("output-1")
    assert found.shape == (count, 10)
    np.testing.assert_allclose(found, np.repeat(expected, count, axis=0), rtol=1e-6)
    assert_v2_error(infer(image_server, {"images": np.array([SECRET.encode()], dtype=object)}), 400)
    # In JSON, images go as base64 text (MLServer's "base64" content type).
    as_text = {"inputs": [{"name": "images", "shape": [count], "datatype": "BYTES",
                           "data": [base64.b64encode(DIGIT_PNG.read_bytes()).decode()] * count}]}
    answer = image_server.request("POST", f"/v2/models/{NAME}/infer", json.dumps(as_text).encode())
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.array(answer.json()["outputs"][0]["data"]).reshape(count, 10),
                               np.repeat(expected, count, axis=0), rtol=1e-6)


@pytest.fixture(scope="module")
def legacy_app(shared_app):
    return shared_app("--plugin", TEST_PLUGINS / "legacy_wine.py", "--model-uri", WINE / "model")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_2020_plugin_takes_request_bodies_in_a_bytes_input(legacy_app, binary):
    expected = predictions(legacy_app, WINE_JSON.read_bytes())
    for count in (1, 2):
        bodies = np.array([WINE_JSON.read_bytes()] * count, dtype=object)
        found = result(infer(legacy_app, {"body": bodies}, binary)).as_numpy("output-1")
        np.testing.assert_array_equal(found[:, 0], np.tile(expected, count))
    assert legacy_app.get(f"/v2/models/{NAME}").json()["inputs"] == [{"name": "input-0", "datatype": "BYTES",
                                                                     "shape": [-1], "parameters": {"content_type": "str"}}]
    assert_v2_error(infer(legacy_app, wine_columns()), 400,
                    "plugin Plugin takes V2 requests as one BYTES input holding request bodies")


ANSWERING_PLUGIN = '''
from mlflow_pluggable_scoring_server.plugin import BasePlugin


class Plugin(BasePlugin):
    """Answers what the body says: nothing, CSV text, or bytes that are no text."""

    def load_model(self, model_uri):
        return None

    def predict(self, model, data):
        return {b"none": None, b"csv": "a,b\\n1,2\\n", b"bytes": b"\\xff\\x00"}[bytes(data)]

    def request_content_type(self):
        return "text/plain"

    def response_content_types(self):
        return ["text/csv"]
'''


def test_a_plugins_answers_that_are_not_json_are_bytes_elements(make_app, tmp_path):
    (tmp_path / "answering.py").write_text(ANSWERING_PLUGIN)
    app = make_app("--plugin", tmp_path / "answering.py", "--model-uri", tmp_path)
    found = result(infer(app, {"b": np.array([b"csv", b"bytes"], dtype=object)}))
    assert found.as_numpy("output-1").tolist() == [[b"a,b\n1,2\n"], [b"\xff\x00"]]
    assert_v2_error(infer(app, {"b": np.array([b"none"], dtype=object)}), 500, "the plugin answered nothing")


# --- bad requests


def _doc(inputs, **fields):
    return json.dumps({"inputs": inputs, **fields}).encode()


def _wine_inputs(**changes):
    """The wine request as JSON inputs, the first input changed as given; the data are the secret."""
    inputs = [{"name": name, "shape": [3, 1], "datatype": "FP32", "data": [float(SECRET)] * 3} for name in WINE_COLUMNS]
    inputs[0] = {**inputs[0], **changes}
    return inputs


def _binary(size, data, shape=(3, 1)):
    """The wine request with its first input as binary data of ``size`` bytes (``data``), the others JSON."""
    inputs = _wine_inputs(shape=list(shape), parameters={"binary_data_size": size})
    del inputs[0]["data"]
    header = _doc(inputs)
    return header + data, len(header)


BAD_REQUESTS = {
    "shape and data disagree": (_doc(_wine_inputs(shape=[4, 1])), None, "its shape holds 4 elements but its data has 3"),
    "unknown datatype": (_doc(_wine_inputs(datatype="FP128")), None, "datatype must be one of BOOL"),
    "missing input": (_doc(_wine_inputs()[1:]), None, "Model is missing inputs ['fixed acidity']"),
    "wrong name": (_doc(_wine_inputs(name="acidity")), None, "Model is missing inputs ['fixed acidity']"),
    "an input of more rows": (_doc(_wine_inputs(shape=[4, 1], data=[1.0] * 4)), None, "must all have the same number of rows"),
    "strings for FP32": (_doc(_wine_inputs(data=[SECRET] * 3)), None, 'must hold only numbers for FP32'),
    "strings for a float column": (_doc(_wine_inputs(datatype="BYTES", data=[SECRET] * 3)), None,
                                   "Can not safely convert str to float32"),
    "FP64 for a float column": (_doc(_wine_inputs(datatype="FP64")), None, "Can not safely convert float64 to float32"),
    "binary size off the shape": (*_binary(8, b"31337..."),
                                  "must be 4 bytes for each of the 3 elements"),
    "binary sizes past the body": (*_binary(12, b"31337"),
                                   "goes past the end of the body"),
    "header length larger than the body": (_doc(_wine_inputs()), 10**6, "larger than the request body"),
    "huge shape, little data": (_doc(_wine_inputs(shape=[2**40, 2**40])), None, "its data has 3"),
    "huge binary shape": (*_binary(12, b"313373133731", shape=[2**62]), "4 bytes for each of the 4611686018427387904"),
    "huge binary size": (*_binary(2**62, b"31337313373"), "goes past the end of the body"),
    "not JSON": (b'{"inputs": [31337', None, "not valid JSON"),
    "no inputs": (_doc([]), None, '"inputs" must be a non-empty list'),
}


@pytest.mark.parametrize("body, header_length, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS)
def test_bad_requests_get_400_and_one_line_that_quotes_no_value(pyfunc_server, body, header_length, message):
    assert_v2_error(post(pyfunc_server, body, header_length), 400, message)
    assert result(infer(pyfunc_server, wine_columns())).as_numpy("output-1").shape == (3, 1)  # still answering


@pytest.mark.parametrize("header_length", ["abc", "-1", "1.5", "²", "12 34"])
def test_a_header_length_that_is_no_number_is_400(pyfunc_server, header_length):
    body, _ = triton_body(wine_columns(), False)
    assert_v2_error(post(pyfunc_server, body, headers={HEADER_LENGTH: header_length}), 400,
                    "Inference-Header-Content-Length must be a non-negative integer")


# --- a real server and tritonclient's own client


def test_tritonclients_own_client_on_a_real_server(wine_process):
    client = httpclient.InferenceServerClient(url=wine_process.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
        metadata = client.get_model_metadata(NAME)
        assert [i["name"] for i in metadata["inputs"]] == WINE_COLUMNS
        expected = predictions(wine_process, WINE_JSON.read_bytes())
        for binary in (True, False):
            inputs = []
            for name, array in wine_columns().items():
                inputs.append(httpclient.InferInput(name, list(array.shape), "FP32"))
                inputs[-1].set_data_from_numpy(array, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("output-1", binary_data=binary)]
            found = client.infer(NAME, inputs, outputs=outputs, request_id=f"binary-{binary}")
            assert found.get_response()["id"] == f"binary-{binary}"
            np.testing.assert_allclose(found.as_numpy("output-1")[:, 0], expected, rtol=1e-6)
        with pytest.raises(InferenceServerException) as refused:
            client.infer(NAME, inputs[1:])
        assert refused.value.status() == "400" and "missing inputs: fixed acidity" in refused.value.message()
        assert not client.is_model_ready("nope")
        assert client.is_server_ready()
    finally:
        client.close()
