"""The Open Inference Protocol (V2) without HTTP: request bytes -> named arrays -> model input, and back.

- ``decode_request`` reads a JSON inference request, with the binary tensor data extension
  (tensors as raw little-endian bytes after the JSON header, BYTES elements prefixed with their
  4-byte length), and checks everything: any problem is one ``InvalidInput`` line that names
  inputs but never quotes the request's values.
- ``encode_response`` writes the answer as JSON, or with binary tensors when the client asked.
- ``model_metadata``, ``to_model_input`` and ``from_model_output`` map MLflow signatures, model
  inputs and model outputs the way Seldon MLServer's MLflow runtime (``mlserver-mlflow`` 1.7.1)
  does, so clients written against it keep their names, datatypes and shapes; where MLServer
  fails (500s, silent truncation), this module answers 400 with a reason instead.
"""

import base64
import binascii
import json
import math
import struct
import sys
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from .decoders import read_json
from .errors import InvalidInput, ScoringError

DATATYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),  # elements: str from JSON, bytes from binary data
}
_NUMERIC = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
# Python types JSON "data" may hold per datatype; null is NaN for floats, as MLServer writes NaN.
_JSON_TYPES = {"BOOL": {bool}, "BYTES": {str}, **{name: {int} for name in DATATYPES if "INT" in name},
               **{name: {int, float, type(None)} for name in ("FP16", "FP32", "FP64")}}
_JSON_KINDS = {"BOOL": "true or false", "BYTES": "strings", "FP16": "numbers", "FP32": "numbers", "FP64": "numbers"}

# Request parameters that steer the protocol, not the model: never passed to pyfunc ``params``.
# (content_type and headers are MLServer's; the rest are reserved by the Triton/KServe extensions.)
RESERVED_PARAMETERS = frozenset({"content_type", "headers", "binary_data_output", "binary_data_size",
                                 "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"})

# MLServer's mapping of MLflow column types (mlflow.types.DataType names): (V2 datatype, MLServer content type).
# MLflow and pandas are imported only when a signature or a table is handled: a worker that
# serves V2 through its plugin's tensors alone (the ONNX sample) never imports them.
_COLUMN_TYPES = {
    "boolean": ("BOOL", "np"), "integer": ("INT32", "np"), "long": ("INT64", "np"), "float": ("FP32", "np"),
    "double": ("FP64", "np"), "string": ("BYTES", "str"), "binary": ("BYTES", "base64"), "datetime": ("BYTES", "datetime"),
}
SINGLE_OUTPUT_NAME = "output-1"  # what MLServer names an array, Series or list answer


@dataclass(frozen=True)
class RequestInput:
    name: str
    datatype: str
    shape: tuple
    data: np.ndarray  # already of ``shape``, dtype DATATYPES[datatype]
    parameters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    parameters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class InferenceRequest:
    inputs: list
    outputs: list = field(default_factory=list)  # RequestedOutput; empty: every output
    id: str | None = None
    parameters: dict = field(default_factory=dict)

    @property
    def binary_data_output(self):
        return self.parameters.get("binary_data_output", False)

    @property
    def params(self):
        """The request's parameters meant for the model (pyfunc ``params``), or None."""
        return {k: v for k, v in self.parameters.items() if k not in RESERVED_PARAMETERS} or None


def _quote(name):
    return repr(name if len(name) <= 60 else name[:57] + "...")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _parameters(doc, what):
    parameters = doc.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput(f'{what}: "parameters" must be a JSON object')
    return parameters


def _flag(parameters, key, what):
    if not isinstance(parameters.get(key, False), bool):
        raise InvalidInput(f"{what}: parameter {key} must be true or false")


def _name(doc, what):
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f'{what} needs a "name" string')
    return name


def _unique(names, what):
    if len(set(names)) != len(names):
        raise InvalidInput(f"two {what} have the same name")


def decode_request(body, header_length=None):
    """Read a V2 inference request: the JSON header, then (binary extension) the tensors' bytes.

    ``header_length`` is the ``Inference-Header-Content-Length`` header as an int, or None when absent.
    """
    body = memoryview(body)
    if header_length is None:
        header_length = len(body)
    elif not _is_int(header_length) or header_length < 0:
        raise InvalidInput("Inference-Header-Content-Length must be a non-negative integer")
    elif header_length > len(body):
        raise InvalidInput("Inference-Header-Content-Length is larger than the request body")
    doc = read_json(bytes(body[:header_length]))
    binary = body[header_length:]
    if not isinstance(doc, dict):
        raise InvalidInput('a V2 inference request is a JSON object with an "inputs" list')
    if doc.get("id") is not None and not isinstance(doc["id"], str):
        raise InvalidInput('"id" must be a string')
    parameters = _parameters(doc, "the request")
    _flag(parameters, "binary_data_output", "the request")
    if not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise InvalidInput('"inputs" must be a non-empty list of tensors')
    inputs, offset = [], 0
    for index, item in enumerate(doc["inputs"]):
        tensor, offset = _read_input(index, item, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} bytes more than the inputs'"
                           " binary_data_size add up to")
    _unique([tensor.name for tensor in inputs], "inputs")
    outputs = doc.get("outputs")
    outputs = [] if outputs is None else outputs
    if not isinstance(outputs, list):
        raise InvalidInput('"outputs" must be a list')
    outputs = [_read_output(index, item) for index, item in enumerate(outputs)]
    _unique([output.name for output in outputs], "requested outputs")
    return InferenceRequest(inputs, outputs, doc.get("id"), parameters)


def _read_output(index, doc):
    what = f"outputs[{index}]"
    name = _name(doc, what)
    parameters = _parameters(doc, what)
    _flag(parameters, "binary_data", f"output {_quote(name)}")
    if "classification" in parameters:
        raise InvalidInput("the classification extension is not supported: ask for the output itself")
    return RequestedOutput(name, parameters)


def _read_input(index, doc, binary, offset):
    name = _name(doc, f"inputs[{index}]")
    what = f"input {_quote(name)}"
    datatype = doc.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"{what}: datatype must be one of {', '.join(DATATYPES)}")
    shape = doc.get("shape")
    if not isinstance(shape, list) or not all(_is_int(dim) and dim >= 0 for dim in shape):
        raise InvalidInput(f"{what}: shape must be a list of non-negative integers")
    count = math.prod(shape)  # a Python int: nothing is allocated from it
    parameters = _parameters(doc, what)
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in doc:
            raise InvalidInput(f'{what} has neither "data" nor parameters.binary_data_size')
        data = _from_json(what, doc["data"], datatype, count)
    else:
        if "data" in doc:
            raise InvalidInput(f'{what} has both "data" and parameters.binary_data_size')
        if not _is_int(size) or size < 0:
            raise InvalidInput(f"{what}: binary_data_size must be a non-negative integer")
        if size > len(binary) - offset:
            raise InvalidInput(f"{what}: binary_data_size goes past the end of the body"
                               " (check Inference-Header-Content-Length and the sizes)")
        data = _from_binary(what, binary[offset:offset + size], datatype, count)
        offset += size
    return RequestInput(name, datatype, tuple(shape), data.reshape(shape), parameters), offset


def _count_error(what, count, found):
    return InvalidInput(f"{what}: its shape holds {count} elements but its data has {found}")


def _from_json(what, data, datatype, count):
    if not isinstance(data, list):
        raise InvalidInput(f'{what}: "data" must be a list')
    values, types = data, set(map(type, data))
    if list in types or datatype == "BYTES":
        # Nested lists become dimensions of an array of Python objects, checked below (flat numbers, as
        # clients mostly send them, are checked as they are and converted at once).
        try:
            values = np.array(data, dtype=object).reshape(-1)
        except ValueError:
            raise InvalidInput(f'{what}: "data" is not a regular nested list') from None
        types = set(map(type, values))
        if list in types:
            raise InvalidInput(f'{what}: "data" is not a regular nested list (rows of different lengths)')
    if len(values) != count:
        raise _count_error(what, count, len(values))
    if not types <= _JSON_TYPES[datatype]:
        raise InvalidInput(f'{what}: "data" must hold only {_JSON_KINDS.get(datatype, "integers")} for {datatype}')
    if datatype == "BYTES":
        return values
    try:
        return np.array(values, dtype=DATATYPES[datatype])
    except OverflowError:
        raise InvalidInput(f"{what}: a value is out of the range of {datatype}") from None


def _from_binary(what, chunk, datatype, count):
    if datatype == "BYTES":
        return _split_bytes(what, chunk, count)
    dtype = DATATYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(f"{what}: binary_data_size must be {dtype.itemsize} bytes for each of"
                           f" the {count} elements of its shape")
    if datatype == "BOOL" and count and np.frombuffer(chunk, np.uint8).max() > 1:
        raise InvalidInput(f"{what}: BOOL elements are bytes 0 or 1")
    # A copy: arrays of the (read-only) body would surprise models that work in place.
    return np.frombuffer(chunk, dtype.newbyteorder("<")).astype(dtype)


def _split_bytes(what, chunk, count):
    """BYTES elements, each a 4-byte little-endian length then its bytes; their number is bounded by the chunk."""
    elements, position = [], 0
    while position < len(chunk):
        if len(elements) == count:
            raise _count_error(what, count, f"more than {count}")
        if position + 4 > len(chunk):
            raise InvalidInput(f"{what}: its binary data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", chunk, position)
        position += 4
        if position + length > len(chunk):
            raise InvalidInput(f"{what}: an element's length goes past its binary_data_size")
        elements.append(bytes(chunk[position:position + length]))
        position += length
    if len(elements) != count:
        raise _count_error(what, count, len(elements))
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def datatype_of(dtype):
    """The V2 datatype of a numpy dtype (strings and objects are BYTES), or None."""
    dtype = np.dtype(dtype)
    return "BYTES" if dtype.kind in "OUS" else _NUMERIC.get(dtype.newbyteorder("="))


def encode_response(model_name, model_version, outputs, *, id=None, requested=(), binary_data_output=False,
                    parameters=None):
    """The body and headers of a V2 inference response.

    ``outputs`` is a list of ``(name, array or list of str/bytes)``. ``requested`` (the request's
    ``outputs``) picks and orders them; an output goes as binary data when its ``binary_data``
    parameter says so, else as ``binary_data_output`` says. Unknown requested names are InvalidInput.
    """
    available = dict(outputs)
    if requested:
        unknown = [output.name for output in requested if output.name not in available]
        if unknown:
            raise InvalidInput(f"output {_quote(unknown[0])} was requested; this model answers with"
                               f" {', '.join(map(_quote, available))}")
        chosen = [(output.name, output.parameters.get("binary_data", binary_data_output)) for output in requested]
    else:
        chosen = [(name, binary_data_output) for name in available]
    doc = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = str(model_version)
    if id is not None:
        doc["id"] = id
    if parameters:
        doc["parameters"] = parameters
    doc["outputs"], chunks = [], []
    for name, binary in chosen:
        array = _output_array(name, available[name])
        datatype = datatype_of(array.dtype)
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            chunks.append(_to_binary(array, datatype))
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = _to_json(name, array, datatype)
        doc["outputs"].append(entry)
    header = json.dumps(doc, allow_nan=False).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {"Content-Type": "application/octet-stream",
                                         "Inference-Header-Content-Length": str(len(header))}


def _output_array(name, value):
    array = np.asarray(value)
    if array.dtype.kind == "M":  # dates and times: ISO 8601 text, as MLServer's datetime content type
        array = np.datetime_as_string(array, unit="auto").astype(object)
    if datatype_of(array.dtype) is None:
        raise ScoringError(f"output {_quote(name)} has dtype {array.dtype}, which V2 cannot carry")
    return array


def _text(element):
    """A BYTES element as text: str as is, other objects (numbers, dicts, None) as JSON."""
    if isinstance(element, str):
        return element
    return json.dumps(element, default=str)


def _to_json(name, array, datatype):
    values = array.reshape(-1).tolist()
    if datatype == "BYTES":
        try:
            return [value.decode() if isinstance(value, bytes) else _text(value) for value in values]
        except UnicodeDecodeError:
            raise ScoringError(f"output {_quote(name)} holds bytes that are not UTF-8 text: ask for it as"
                               " binary data (parameter binary_data_output)") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # JSON has no NaN: null, as MLServer
        values = [value if math.isfinite(value) else None for value in values]
    return values


def _to_binary(array, datatype):
    if datatype != "BYTES":
        return np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    elements = [value if isinstance(value, bytes) else _text(value).encode() for value in array.reshape(-1).tolist()]
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def _spec_types(spec):
    """(V2 datatype, MLServer content type) of one MLflow column or tensor spec."""
    from mlflow.types.schema import DataType, TensorSpec

    if isinstance(spec, TensorSpec):
        return datatype_of(spec.type) or "BYTES", "np"
    if isinstance(spec.type, DataType):
        return _COLUMN_TYPES[spec.type.name]
    return "BYTES", "pd_json"  # Array, Object, Map, Any: JSON text


def _metadata_tensor(spec, name):
    datatype, content_type = _spec_types(spec)
    from mlflow.types.schema import TensorSpec

    shape = list(spec.shape) if isinstance(spec, TensorSpec) else [-1, 1]  # a column: N rows of one value
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"content_type": content_type}}


def _metadata_tensors(schema, prefix):
    specs = schema.inputs if schema is not None else []
    return [_metadata_tensor(spec, spec.name or f"{prefix}{index}") for index, spec in enumerate(specs)]


def _model_content_type(schema):
    """How MLServer hands a request to the model: one DataFrame, one array, a dict of arrays (or None)."""
    if schema is None:
        return None
    if not schema.is_tensor_spec():
        return "pd"
    return "dict" if schema.has_input_names() else "np"


def model_metadata(name, versions, signature, platform=""):
    """V2 model metadata from an MLflow ``ModelSignature`` (or None), as MLServer's MLflow runtime gives it.

    Note MLServer's names: unnamed specs are ``input-0``, ``output-0``... while a single array
    answer is named ``output-1`` (SINGLE_OUTPUT_NAME); clients written against it expect both.
    """
    inputs = signature.inputs if signature is not None else None
    content_type = _model_content_type(inputs)
    return {
        "name": name,
        "versions": [str(version) for version in versions or []],
        "platform": platform,
        "inputs": _metadata_tensors(inputs, "input-"),
        "outputs": _metadata_tensors(signature.outputs if signature is not None else None, "output-"),
        "parameters": {"content_type": content_type} if content_type else {},
    }


def _utf8(what, element):
    try:
        return element.decode() if isinstance(element, bytes) else element
    except UnicodeDecodeError:
        raise InvalidInput(f"{what}: an element is not UTF-8 text") from None


def base64_or_raw(what, element):
    raw = element.encode() if isinstance(element, str) else element
    try:  # MLServer's rule: base64 text is decoded, anything else is taken as the bytes themselves
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        return raw


def _iso_datetime(what, element):
    try:
        return datetime.fromisoformat(_utf8(what, element))
    except ValueError:
        raise InvalidInput(f"{what}: an element is not an ISO 8601 date and time") from None


def _json_value(what, element):
    try:
        return json.loads(element)
    except (ValueError, RecursionError):
        raise InvalidInput(f"{what}: an element is not JSON text") from None


_ELEMENT_DECODERS = {"str": _utf8, "base64": base64_or_raw, "datetime": _iso_datetime, "pd_json": _json_value}


def _column(tensor, content_type):
    what = f"input {_quote(tensor.name)}"
    if not tensor.shape or tensor.data.size != tensor.shape[0]:
        raise InvalidInput(f"{what}: a column takes shape [N] or [N, 1]")
    import pandas as pd

    values = tensor.data.reshape(-1)
    if tensor.datatype != "BYTES":
        return pd.Series(values)
    decode = _ELEMENT_DECODERS.get(content_type)
    return pd.Series([decode(what, value) for value in values] if decode else values.tolist())


def _frame(request, column_types):
    rows = {tensor.shape[0] for tensor in request.inputs if tensor.shape}
    if len(rows) > 1:
        raise InvalidInput("the inputs are the columns of one table: they must all have the same number of rows")
    import pandas as pd

    columns = {tensor.name: _column(tensor, tensor.parameters.get("content_type") or column_types.get(tensor.name))
               for tensor in request.inputs}
    return pd.DataFrame(columns)


def _one(request):
    if len(request.inputs) != 1:
        raise InvalidInput(f"this model takes one input tensor; the request has {len(request.inputs)}")
    return request.inputs[0]


_MODEL_INPUTS = {
    "pd": _frame,
    "np": lambda request, _: _one(request).data,
    "dict": lambda request, _: {tensor.name: tensor.data for tensor in request.inputs},
    "str": lambda request, _: [_utf8("the input", value) for value in _one(request).data.reshape(-1)],
}


def to_model_input(request, signature):
    """The model input MLServer's MLflow runtime builds for this request, and the pyfunc ``params``.

    A DataFrame (one column per input) for a column signature, the single array for an unnamed
    tensor signature, a dict of arrays for named tensors; the request's ``content_type`` parameter
    (pd, np, dict, str) overrides it, as in MLServer. Without a signature (where MLServer hands the
    model its raw request object): one input is its array, several a dict of arrays.
    """
    inputs = signature.inputs if signature is not None else None
    content_type = (request.parameters.get("content_type") or _model_content_type(inputs)
                    or ("np" if len(request.inputs) == 1 else "dict"))
    if content_type not in _MODEL_INPUTS:
        raise InvalidInput(f"parameter content_type must be one of {', '.join(_MODEL_INPUTS)}")
    column_types = {spec["name"]: spec["parameters"]["content_type"] for spec in _metadata_tensors(inputs, "input-")}
    return _MODEL_INPUTS[content_type](request, column_types), request.params


def _with_batch_dimension(array):
    """MLServer's rule: an answer of fewer than 2 dimensions gets a trailing one ([N] -> [N, 1])."""
    return array.reshape(array.shape + (1,)) if array.ndim < 2 else array


def from_model_output(output):
    """Named arrays for a model's answer, named as MLServer names them.

    A DataFrame gives one output per column and a dict one per key; an array, Series, list or
    scalar gives SINGLE_OUTPUT_NAME. Arrays of fewer than 2 dimensions get a trailing one.
    """
    pd = sys.modules.get("pandas")  # an answer cannot be a DataFrame unless pandas was imported
    if pd is not None and isinstance(output, pd.DataFrame):
        named = [(str(column), output[column].to_numpy()) for column in output.columns]
    elif isinstance(output, dict):
        named = [(str(key), value) for key, value in output.items()]
    else:
        named = [(SINGLE_OUTPUT_NAME, output.to_numpy() if pd is not None and isinstance(output, pd.Series) else output)]
    try:
        return [(name, _with_batch_dimension(np.asarray(value))) for name, value in named]
    except ValueError:  # ragged lists
        raise ScoringError(f"the model's answer ({type(output).__name__}) cannot be made into V2 tensors") from None
