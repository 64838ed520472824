"""The V2 codecs (mlflow_pluggable_scoring_server.v2), fast and without a server.

Requests are the bytes tritonclient.http itself writes (JSON and binary tensors) and responses are
read back by its own parser. The expected metadata, model inputs and output names are what
MLServer 1.7.1 with mlserver-mlflow 1.7.1 (and MLflow 3.17.2) answered for the same signatures and
requests: its real runtime, served over REST, with a stand-in model that recorded its input.
"""

import json
import time
import tracemalloc
from datetime import datetime

import mlflow
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as httpclient
from conftest import MNIST, WINE
from mlflow.models import ModelSignature
from mlflow.types.schema import (
    Array,
    ColSpec,
    DataType,
    Map,
    Object,
    Property,
    Schema,
    TensorSpec,
)
from tritonclient.utils import np_to_triton_dtype

from mlflow_pluggable_scoring_server import v2
from mlflow_pluggable_scoring_server.errors import InvalidInput, ScoringError

WINE_COLUMNS = ["fixed acidity", "volatile acidity", "citric acid", "residual sugar", "chlorides",
                "free sulfur dioxide", "total sulfur dioxide", "density", "pH", "sulphates", "alcohol"]


def triton_body(arrays, binary, outputs=None, **kwargs):
    """The body and Inference-Header-Content-Length tritonclient sends for these named arrays."""
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)


def triton_request(arrays, binary, outputs=None, **kwargs):
    return v2.decode_request(*triton_body(arrays, binary, outputs, **kwargs))


def triton_result(body, headers):
    length = headers.get("Inference-Header-Content-Length")
    return httpclient.InferenceServerClient.parse_response_body(body, header_length=int(length) if length else None)


def _extremes(dtype):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    tiny = 1 if np.issubdtype(dtype, np.integer) else info.tiny
    return np.array([[info.min, 0], [tiny, info.max]], dtype)


ARRAYS = {
    "BOOL": np.array([[True, False], [False, True]]),
    **{name: _extremes(dtype) for name, dtype in v2.DATATYPES.items() if name not in ("BOOL", "BYTES")},
    "BYTES": np.array([["é".encode(), b""], ["日本語".encode(), b"plain"]], dtype=object),
}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(ARRAYS))
def test_every_datatype_goes_both_ways(datatype, binary):
    array = ARRAYS[datatype]
    request = triton_request({"x": array}, binary)
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (2, 2))
    assert tensor.data.dtype == v2.DATATYPES[datatype]
    assert tensor.data.flags.writeable  # not a view of the read-only body: models may work in place
    # JSON carries BYTES as strings, the binary extension as bytes
    expected = array if binary or datatype != "BYTES" else np.vectorize(bytes.decode, otypes=[object])(array)
    np.testing.assert_array_equal(tensor.data, expected)

    body, headers = v2.encode_response("m", "1", [("y", tensor.data)], binary_data_output=binary)
    assert ("Inference-Header-Content-Length" in headers) == binary
    result = triton_result(body, headers)
    assert result.get_output("y")["datatype"] == datatype
    np.testing.assert_array_equal(result.as_numpy("y"), expected)


def test_json_data_nested_or_flat_is_row_major():
    def decode(data):
        return v2.decode_request(json.dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT16",
                                                         "data": data}]}).encode()).inputs[0].data
    flat = decode([1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(flat, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(decode([[1, 2, 3], [4, 5, 6]]), flat)


def test_null_is_nan_for_floats_and_ids_and_parameters_are_kept():
    request = v2.decode_request(json.dumps({
        "id": "r1", "parameters": {"alpha": 1, "binary_data_output": True, "content_type": "np", "headers": {}},
        "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, None]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}]}).encode())
    assert request.id == "r1" and request.binary_data_output
    assert request.params == {"alpha": 1}  # what pyfunc gets: the protocol's own parameters are not the model's
    np.testing.assert_array_equal(request.inputs[0].data, np.array([1.5, np.nan], np.float32))
    assert request.outputs == [v2.RequestedOutput("y", {"binary_data": False})]


def _input(datatype="FP32", shape=(1,), **fields):
    return {"name": "x", "shape": list(shape), "datatype": datatype, **fields}


def _doc(*inputs, **fields):
    return json.dumps({"inputs": list(inputs), **fields}).encode()


def _binary(header, data):
    return header + data, len(header)


SECRETS = ("s3cr3t", "31337")
BAD_REQUESTS = {
    "not JSON": (b"{s3cr3t", None, "not valid JSON"),
    "not UTF-8": (b"\xff31337", None, "not UTF-8"),
    "not an object": (b'["s3cr3t"]', None, "JSON object"),
    "no inputs": (_doc(), None, "non-empty list"),
    "input not an object": (_doc("s3cr3t"), None, "inputs[0] must be a JSON object"),
    "input without name": (_doc({"shape": [1], "datatype": "FP32", "data": [31337]}), None, 'needs a "name"'),
    "id not a string": (_doc(_input(data=[1]), id=31337), None, '"id" must be a string'),
    "parameters not an object": (_doc(_input(data=[1]), parameters="s3cr3t"), None, "must be a JSON object"),
    "unknown datatype": (_doc(_input("s3cr3t", data=[31337])), None, "datatype must be one of BOOL, UINT8"),
    "negative dimension": (_doc(_input(shape=[-1], data=[31337])), None, "non-negative integers"),
    "fractional dimension": (_doc(_input(shape=[1.5], data=[31337])), None, "non-negative integers"),
    "boolean dimension": (_doc(_input(shape=[True], data=[31337])), None, "non-negative integers"),
    "fewer elements than the shape": (_doc(_input(shape=[3], data=[31337, 2])), None,
                                      "holds 3 elements but its data has 2"),
    "more elements than the shape": (_doc(_input(shape=[2, 1], data=[[1], [2], [31337]])), None, "holds 2 elements"),
    "ragged rows": (_doc(_input(shape=[2], data=[[1, 2], [31337]])), None, "rows of different lengths"),
    "data not a list": (_doc(_input(data=31337)), None, '"data" must be a list'),
    "text for FP32": (_doc(_input(data=["s3cr3t"])), None, "only numbers for FP32"),
    "fraction for INT32": (_doc(_input("INT32", data=[31337.5])), None, "only integers for INT32"),
    "boolean for INT64": (_doc(_input("INT64", data=[True])), None, "only integers for INT64"),
    "number for BOOL": (_doc(_input("BOOL", data=[31337])), None, "only true or false for BOOL"),
    "number for BYTES": (_doc(_input("BYTES", data=[31337])), None, "only strings for BYTES"),
    "null for INT8": (_doc(_input("INT8", data=[None])), None, "only integers for INT8"),
    "too big for UINT8": (_doc(_input("UINT8", data=[31337])), None, "out of the range of UINT8"),
    "negative for UINT64": (_doc(_input("UINT64", data=[-31337])), None, "out of the range of UINT64"),
    "too big for INT64": (_doc(_input("INT64", data=[2**70 + 31337])), None, "out of the range of INT64"),
    "no data": (_doc(_input()), None, 'neither "data" nor parameters.binary_data_size'),
    "data and binary": (*_binary(_doc(_input(data=[31337], parameters={"binary_data_size": 4})), b"\0" * 4),
                        "both"),
    "duplicate names": (_doc(_input(data=[1]), _input(data=[31337])), None, "two inputs have the same name"),
    "binary_data_output not a flag": (_doc(_input(data=[1]), parameters={"binary_data_output": "s3cr3t"}), None,
                                      "binary_data_output must be true or false"),
    "binary_data not a flag": (_doc(_input(data=[1]), outputs=[{"name": "y", "parameters": {"binary_data": 31337}}]),
                               None, "binary_data must be true or false"),
    "classification": (_doc(_input(data=[1]), outputs=[{"name": "y", "parameters": {"classification": 3}}]), None,
                       "classification extension is not supported"),
    "outputs not a list": (_doc(_input(data=[1]), outputs="s3cr3t"), None, '"outputs" must be a list'),
    "outputs an empty object": (_doc(_input(data=[1]), outputs={}), None, '"outputs" must be a list'),  # found by schemathesis
    "duplicate outputs": (_doc(_input(data=[1]), outputs=[{"name": "y"}, {"name": "y"}]), None, "same name"),
    "binary size not a number": (*_binary(_doc(_input(parameters={"binary_data_size": "s3cr3t"})), b"31337"),
                                 "binary_data_size must be a non-negative integer"),
    "binary size off the shape": (*_binary(_doc(_input(shape=[2], parameters={"binary_data_size": 4})), b"3133"),
                                  "must be 4 bytes for each of the 2 elements"),
    "binary past the body": (*_binary(_doc(_input(parameters={"binary_data_size": 8})), b"3133"),
                             "goes past the end of the body"),
    "binary without the header length": (_doc(_input(parameters={"binary_data_size": 4})) + b"3133", None,
                                         "not valid JSON"),
    "bytes left over": (*_binary(_doc(_input(parameters={"binary_data_size": 4})), b"31337"),
                        "1 bytes more than the inputs' binary_data_size add up to"),
    "header longer than the body": (b'{"inputs": []}', 31337, "larger than the request body"),
    "negative header length": (b'{"inputs": []}', -1, "non-negative integer"),
    "BOOL byte not 0 or 1": (*_binary(_doc(_input("BOOL", shape=[2], parameters={"binary_data_size": 2})), b"\1\2"),
                             "BOOL elements are bytes 0 or 1"),
    "BYTES cut in a length": (*_binary(_doc(_input("BYTES", parameters={"binary_data_size": 2})), b"\6\0"),
                              "ends inside an element's 4-byte length"),
    "BYTES length past its size": (*_binary(_doc(_input("BYTES", parameters={"binary_data_size": 10})),
                                           b"\xff\xff\xff\xffs3cr3t"), "goes past its binary_data_size"),
    "BYTES more elements than the shape": (*_binary(_doc(_input("BYTES", parameters={"binary_data_size": 20})),
                                                   b"\6\0\0\0s3cr3t\6\0\0\0s3cr3t"), "has more than 1"),
    "BYTES fewer elements than the shape": (*_binary(_doc(_input("BYTES", shape=[3],
                                                                  parameters={"binary_data_size": 10})),
                                                     b"\6\0\0\0s3cr3t"), "holds 3 elements but its data has 1"),
}


@pytest.mark.parametrize("body, header_length, message", BAD_REQUESTS.values(), ids=BAD_REQUESTS)
def test_bad_requests_are_one_line_that_quotes_no_value(body, header_length, message):
    with pytest.raises(InvalidInput) as error:
        v2.decode_request(body, header_length)
    assert message in error.value.message
    assert "\n" not in error.value.message and not any(secret in error.value.message for secret in SECRETS)


HUGE = 2**40
HUGE_REQUESTS = {
    "JSON shape": (_doc(_input(shape=[HUGE, HUGE], data=[1])), None),
    "binary shape": _binary(_doc(_input("FP64", shape=[HUGE], parameters={"binary_data_size": 8})), b"\0" * 8),
    "binary size": _binary(_doc(_input(parameters={"binary_data_size": HUGE * HUGE})), b"\0" * 8),
    "BYTES shape": _binary(_doc(_input("BYTES", shape=[HUGE], parameters={"binary_data_size": 8})), b"\4\0\0\0abcd"),
    "BYTES element length": _binary(_doc(_input("BYTES", parameters={"binary_data_size": 8})), b"\xff\xff\xff\xffabcd"),
}


@pytest.mark.parametrize("body, header_length", HUGE_REQUESTS.values(), ids=HUGE_REQUESTS)
def test_huge_declared_sizes_allocate_nothing(body, header_length):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(InvalidInput):
            v2.decode_request(body, header_length)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000 and time.perf_counter() - start < 0.5


def test_many_bytes_elements_are_bounded_by_the_body():
    elements = b"\0\0\0\0" * 100_000  # 100,000 empty strings for a shape of 2**40
    body, header_length = _binary(_doc(_input("BYTES", shape=[HUGE], parameters={"binary_data_size": len(elements)})),
                                  elements)
    with pytest.raises(InvalidInput, match="holds 1099511627776 elements but its data has 100000"):
        v2.decode_request(body, header_length)


def _outputs():
    return [("a", np.array([[1.0, 2.0]], np.float32)), ("b", np.array([[1], [2]], np.int64)),
            ("c", np.array(["é", ""], dtype=object))]


def test_requested_outputs_are_chosen_ordered_and_binary_each_as_asked():
    request = triton_request({"x": np.zeros(1, np.float32)}, True, request_id="r7",
                             outputs=[httpclient.InferRequestedOutput("c", binary_data=True),
                                      httpclient.InferRequestedOutput("a", binary_data=False)])
    body, headers = v2.encode_response("wine", 3, _outputs(), id=request.id, requested=request.outputs,
                                       binary_data_output=request.binary_data_output)
    result = triton_result(body, headers)
    response = result.get_response()
    assert [output["name"] for output in response["outputs"]] == ["c", "a"]
    assert (response["model_name"], response["model_version"], response["id"]) == ("wine", "3", "r7")
    assert result.get_output("c")["parameters"] == {"binary_data_size": 10}  # 4 + 2 ("é" in UTF-8), 4 + 0
    assert result.get_output("a")["data"] == [1.0, 2.0]
    assert result.as_numpy("c").tolist() == ["é".encode(), b""]


def test_binary_data_output_sends_every_output_binary_unless_one_says_no():
    request = v2.decode_request(_doc(_input(data=[1]), parameters={"binary_data_output": True},
                                     outputs=[{"name": "b"}, {"name": "a", "parameters": {"binary_data": False}}]))
    body, headers = v2.encode_response("m", None, _outputs(), requested=request.outputs,
                                       binary_data_output=request.binary_data_output)
    result = triton_result(body, headers)
    assert "model_version" not in result.get_response() and "data" in result.get_output("a")
    np.testing.assert_array_equal(result.as_numpy("b"), [[1], [2]])
    assert result.get_output("b")["parameters"] == {"binary_data_size": 16}


def test_unknown_requested_output_names_the_outputs_there_are():
    requested = [v2.RequestedOutput("output-0")]  # MLServer's metadata name for what it answers as output-1
    with pytest.raises(InvalidInput, match="output 'output-0' was requested; this model answers with 'a', 'b', 'c'"):
        v2.encode_response("m", None, _outputs(), requested=requested)


def test_json_has_null_for_nan_and_infinities():
    body, headers = v2.encode_response("m", None, [("y", np.array([np.nan, np.inf, -np.inf, 1.0], np.float16))])
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(body)["outputs"] == [{"name": "y", "datatype": "FP16", "shape": [4],
                                            "data": [None, None, None, 1.0]}]


def test_bytes_outputs_in_json_must_be_text_and_objects_become_json():
    outputs = [("y", np.array([b"\xff\x00"], dtype=object))]
    with pytest.raises(ScoringError, match="not UTF-8 text: ask for it as binary data") as error:
        v2.encode_response("m", None, outputs)
    assert error.value.status_code == 500
    body, headers = v2.encode_response("m", None, outputs, binary_data_output=True)
    assert triton_result(body, headers).as_numpy("y").tolist() == [b"\xff\x00"]
    body, _ = v2.encode_response("m", None, [("y", np.array([{"k": 1}, None, 2], dtype=object))])
    assert json.loads(body)["outputs"][0]["data"] == ['{"k": 1}', "null", "2"]


def test_an_output_v2_cannot_carry_is_a_server_error():
    with pytest.raises(ScoringError, match="has dtype complex128, which V2 cannot carry"):
        v2.encode_response("m", None, [("y", np.array([1j]))])


# GET /v2/models/{name} from MLServer 1.7.1 serving the two samples under these names.
WINE_METADATA = {
    "name": "wine", "versions": [], "platform": "",
    "inputs": [{"name": column, "datatype": "FP32", "shape": [-1, 1], "parameters": {"content_type": "np"}}
               for column in WINE_COLUMNS],
    "outputs": [{"name": "output-0", "datatype": "FP64", "shape": [-1], "parameters": {"content_type": "np"}}],
    "parameters": {"content_type": "pd"},
}
MNIST_METADATA = {
    "name": "mnist", "versions": [], "platform": "",
    "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, 784], "parameters": {"content_type": "np"}}],
    "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1, 10], "parameters": {"content_type": "np"}}],
    "parameters": {"content_type": "np"},
}


def _signature(model):
    return mlflow.models.Model.load(str(model / "model")).signature


def test_metadata_of_the_samples_is_mlservers():
    assert v2.model_metadata("wine", [], _signature(WINE)) == WINE_METADATA
    assert v2.model_metadata("mnist", None, _signature(MNIST)) == MNIST_METADATA
    assert v2.model_metadata("wine", [3], _signature(WINE), platform="mlflow")["versions"] == ["3"]


def _tensor(name, datatype, shape, content_type):
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"content_type": content_type}}


EVERY_COLUMN_TYPE = ModelSignature(
    inputs=Schema([ColSpec("boolean", "b"), ColSpec("integer", "i"), ColSpec("long", "l"), ColSpec("float", "f"),
                   ColSpec("double", "d"), ColSpec("string", "s"), ColSpec("binary", "bin"), ColSpec("datetime", "dt"),
                   ColSpec(Array(DataType.long), "arr"), ColSpec(Object([Property("k", DataType.string)]), "obj"),
                   ColSpec(Map(DataType.double), "m"), ColSpec("double", "opt", required=False)]),
    outputs=Schema([ColSpec("double")]))
NAMED_TENSORS = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype("float32"), (-1, 2), "a"), TensorSpec(np.dtype("int64"), (-1,), "b"),
                   TensorSpec(np.dtype("object"), (-1,), "t")]),
    outputs=Schema([TensorSpec(np.dtype("float64"), (-1, 3), "y"), TensorSpec(np.dtype("bool"), (-1,), "z")]))
UNNAMED_COLUMNS = ModelSignature(inputs=Schema([ColSpec("double"), ColSpec("string")]),
                                 outputs=Schema([ColSpec("string", "label")]))
METADATA = {  # MLServer 1.7.1's, for models of these signatures, but for the name
    "every column type": (EVERY_COLUMN_TYPE, {
        "inputs": [_tensor("b", "BOOL", [-1, 1], "np"), _tensor("i", "INT32", [-1, 1], "np"),
                   _tensor("l", "INT64", [-1, 1], "np"), _tensor("f", "FP32", [-1, 1], "np"),
                   _tensor("d", "FP64", [-1, 1], "np"), _tensor("s", "BYTES", [-1, 1], "str"),
                   _tensor("bin", "BYTES", [-1, 1], "base64"), _tensor("dt", "BYTES", [-1, 1], "datetime"),
                   _tensor("arr", "BYTES", [-1, 1], "pd_json"), _tensor("obj", "BYTES", [-1, 1], "pd_json"),
                   _tensor("m", "BYTES", [-1, 1], "pd_json"), _tensor("opt", "FP64", [-1, 1], "np")],
        "outputs": [_tensor("output-0", "FP64", [-1, 1], "np")], "parameters": {"content_type": "pd"}}),
    "named tensors": (NAMED_TENSORS, {
        "inputs": [_tensor("a", "FP32", [-1, 2], "np"), _tensor("b", "INT64", [-1], "np"),
                   _tensor("t", "BYTES", [-1], "np")],
        "outputs": [_tensor("y", "FP64", [-1, 3], "np"), _tensor("z", "BOOL", [-1], "np")],
        "parameters": {"content_type": "dict"}}),
    "unnamed columns": (UNNAMED_COLUMNS, {
        "inputs": [_tensor("input-0", "FP64", [-1, 1], "np"), _tensor("input-1", "BYTES", [-1, 1], "str")],
        "outputs": [_tensor("label", "BYTES", [-1, 1], "str")], "parameters": {"content_type": "pd"}}),
    "no signature": (None, {"inputs": [], "outputs": [], "parameters": {}}),
}


@pytest.mark.parametrize("signature, expected", METADATA.values(), ids=METADATA)
def test_metadata_of_every_kind_of_signature_is_mlservers(signature, expected):
    assert v2.model_metadata("m", [], signature) == {"name": "m", "versions": [], "platform": "", **expected}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_column_signature_gets_a_frame_and_the_params(binary):
    columns = {column: np.array([[1.0], [2.0]], np.float32) for column in WINE_COLUMNS}
    request = triton_request(columns, binary, parameters={"alpha": 1})
    frame, params = v2.to_model_input(request, _signature(WINE))
    # MLServer: a float32 DataFrame [2, 11], params {"alpha": 1, "binary_data_output": ...} (its protocol's too)
    assert list(frame.columns) == WINE_COLUMNS and frame.shape == (2, 11)
    assert set(frame.dtypes) == {np.dtype(np.float32)} and frame["pH"].tolist() == [1.0, 2.0]
    assert params == {"alpha": 1}


def test_an_unnamed_tensor_signature_gets_the_one_array_whatever_its_name():
    for name in ("input-0", "pixels"):
        request = triton_request({name: np.ones((1, 784), np.float64)}, True)
        array, params = v2.to_model_input(request, _signature(MNIST))
        assert array.shape == (1, 784) and array.dtype == np.float64 and params is None  # MLServer casts nothing either
    with pytest.raises(InvalidInput, match="this model takes one input tensor; the request has 2"):
        v2.to_model_input(triton_request({"a": np.ones(1), "b": np.ones(1)}, True), _signature(MNIST))


def test_named_tensors_get_a_dict_of_every_input():
    request = triton_request({"a": np.ones((1, 2), np.float32), "b": np.array([7]),
                              "t": np.array([b"x"], dtype=object), "extra": np.array([1, 2], np.int32)}, True)
    arrays, _ = v2.to_model_input(request, NAMED_TENSORS)
    assert list(arrays) == ["a", "b", "t", "extra"]  # MLServer: the same keys, "extra" as a raw list
    assert arrays["a"].shape == (1, 2) and arrays["t"].tolist() == [b"x"] and arrays["extra"].dtype == np.int32


def test_every_column_type_is_decoded_as_mlserver_does():
    request = v2.decode_request(_doc(
        _input("BOOL", [2, 1], data=[True, False]), *[
            {"name": name, "shape": [2], "datatype": datatype, "data": data} for name, datatype, data in [
                ("i", "INT32", [1, 2]), ("l", "INT64", [1, 2]), ("f", "FP32", [1.5, 2]), ("d", "FP64", [1.5, None]),
                ("s", "BYTES", ["é", ""]), ("bin", "BYTES", ["aGVsbG8=", "not base64!"]),
                ("dt", "BYTES", ["2024-01-02T03:04:05", "2024-01-02"]), ("arr", "BYTES", ["[1, 2]", "[]"]),
                ("obj", "BYTES", ['{"k": "v"}', "{}"]), ("extra", "BYTES", ["x", "y"]), ("extranum", "INT8", [1, 2])]]
    ).replace(b'"name": "x"', b'"name": "b"'))
    frame, _ = v2.to_model_input(request, EVERY_COLUMN_TYPE)
    # MLServer's DataFrame had these dtypes, but left "arr" and "obj" as JSON text (MLflow then refuses them)
    assert {column: str(dtype) for column, dtype in frame.dtypes.items()} == {
        "b": "bool", "i": "int32", "l": "int64", "f": "float32", "d": "float64", "s": "str", "bin": "object",
        "dt": "datetime64[us]", "arr": "object", "obj": "object", "extra": "str", "extranum": "int8"}
    assert frame.iloc[0].tolist()[5:10] == ["é", b"hello", datetime(2024, 1, 2, 3, 4, 5), [1, 2], {"k": "v"}]
    assert frame["bin"][1] == b"not base64!" and np.isnan(frame["d"][1])


BAD_TABLES = {  # MLServer: a frame padded with NaN, two 500s, a 500, a 500
    "columns of different lengths": ({"d": np.ones(2), "f": np.ones(3)}, "must all have the same number of rows"),
    "a column that is a matrix": ({"d": np.ones((2, 2))}, "a column takes shape [N] or [N, 1]"),
    "a datetime that is not one": ({"dt": np.array([b"31337"], dtype=object)}, "not an ISO 8601 date"),
    "a string that is not UTF-8": ({"s": np.array([b"\xff"], dtype=object)}, "not UTF-8 text"),
    "a JSON column that is not JSON": ({"arr": np.array([b"[31337"], dtype=object)}, "not JSON text"),
}


@pytest.mark.parametrize("arrays, message", BAD_TABLES.values(), ids=BAD_TABLES)
def test_a_bad_table_is_invalid_input(arrays, message):
    with pytest.raises(InvalidInput) as error:
        v2.to_model_input(triton_request(arrays, True), EVERY_COLUMN_TYPE)
    assert message in error.value.message and "31337" not in error.value.message


def test_the_requests_content_type_overrides_the_signature_as_in_mlserver():
    request = triton_request({"whatever": np.ones((1, 11))}, False, parameters={"content_type": "np"})
    assert v2.to_model_input(request, _signature(WINE))[0].shape == (1, 11)
    request = triton_request({"a": np.ones(2)}, False, parameters={"content_type": "pd"})
    frame, params = v2.to_model_input(request, _signature(MNIST))
    assert list(frame.columns) == ["a"] and params is None
    request = triton_request({"s": np.array([b"a", "é".encode()], dtype=object)}, True,
                             parameters={"content_type": "str"})
    assert v2.to_model_input(request, None)[0] == ["a", "é"]
    with pytest.raises(InvalidInput, match="content_type must be one of pd, np, dict, str"):
        v2.to_model_input(triton_request({"a": np.ones(2)}, False, parameters={"content_type": "s3cr3t"}), None)


def test_without_a_signature_one_input_is_an_array_and_several_a_dict():
    # MLServer hands such a model its own InferenceRequest object, which no pyfunc model can read: a 500
    array, _ = v2.to_model_input(triton_request({"x": np.ones((2, 2), np.int32)}, True), None)
    assert array.shape == (2, 2) and array.dtype == np.int32
    arrays, _ = v2.to_model_input(triton_request({"x": np.ones(1), "y": np.zeros(1)}, True), None)
    assert list(arrays) == ["x", "y"]


# What MLServer 1.7.1 answered for a model returning each of these (name, shape, datatype, data).
MODEL_OUTPUTS = {
    "1-D array": (np.array([1.5, 2.5]), [("output-1", [2, 1], "FP64", [1.5, 2.5])]),
    "2-D array": (np.array([[1, 2], [3, 4]], np.int32), [("output-1", [2, 2], "INT32", [1, 2, 3, 4])]),
    "NaN and infinity": (np.array([np.nan, np.inf, 1.0]), [("output-1", [3, 1], "FP64", [None, None, 1.0])]),
    "dict": ({"p": np.array([1, 2]), "q": np.array([[0.5], [0.25]])},
             [("p", [2, 1], "INT64", [1, 2]), ("q", [2, 1], "FP64", [0.5, 0.25])]),
    "list of strings": (["a", "b"], [("output-1", [2, 1], "BYTES", ["a", "b"])]),
    # MLServer answered 500 for these (a str column with pandas 3, a Series, a list of numbers)
    "DataFrame": (pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}),
                  [("a", [2, 1], "FP64", [1.0, 2.0]), ("b", [2, 1], "BYTES", ["x", "y"])]),
    "Series": (pd.Series([1.0, 2.0], name="s"), [("output-1", [2, 1], "FP64", [1.0, 2.0])]),
    "list of numbers": ([1.0, 2.0], [("output-1", [2, 1], "FP64", [1.0, 2.0])]),
    "dates": (pd.DataFrame({"t": pd.to_datetime(["2024-01-02 03:04:05"])}),
              [("t", [1, 1], "BYTES", ["2024-01-02T03:04:05"])]),
}


@pytest.mark.parametrize("output, expected", MODEL_OUTPUTS.values(), ids=MODEL_OUTPUTS)
def test_model_outputs_are_named_and_shaped_as_mlserver_does(output, expected):
    body, _ = v2.encode_response("m", None, v2.from_model_output(output))
    answered = [(o["name"], o["shape"], o["datatype"], o["data"]) for o in json.loads(body)["outputs"]]
    assert answered == expected


def test_a_ragged_answer_is_a_server_error():
    with pytest.raises(ScoringError, match=r"the model's answer \(list\) cannot be made into V2 tensors"):
        v2.from_model_output([[1], [1, 2]])
