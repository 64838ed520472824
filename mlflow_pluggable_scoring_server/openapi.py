"""The API's OpenAPI 3 document, built from Flask-RESTX's Swagger 2.0 one.

Swagger 2.0 cannot describe a raw binary body (only multipart uploads), so Swagger
UI would show a text box for an image. OpenAPI 3 can: the predict body is declared
with the plugin's media types, binary ones as ``format: binary``, and the UI offers
a file picker for them.
"""

import base64
import json
from http import HTTPStatus
from typing import NamedTuple

from .media import is_json

SCORING_PATHS = ("/api/predict", "/invocations")  # /invocations: MLflow's name for the same endpoint
# MLflow's answers here are labelled application/json but are not JSON ("\n", "3.1.0"), so
# their success is declared without a body schema that clients would try to parse.
UNDESCRIBED_PATHS = ("/ping", "/health", "/version")

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error_code", "message"],
    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
}
# What each error status answers, as the server words it: the example of that status.
ERROR_MESSAGES = {
    HTTPStatus.BAD_REQUEST: "request body is not valid JSON: Expecting value at line 1 column 1",
    HTTPStatus.UNAUTHORIZED: "send the server's token as 'Authorization: Bearer <token>'",
    HTTPStatus.NOT_ACCEPTABLE: "cannot answer with any type the Accept header allows; available: application/json",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "request body is larger than the server's limit of 16777216 bytes",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "this Content-Type is not accepted; send one of: application/json",
    HTTPStatus.INTERNAL_SERVER_ERROR: "the plugin failed to score this request; the server log has the details",
    HTTPStatus.SERVICE_UNAVAILABLE: "the model is still loading; retry shortly",
    HTTPStatus.GATEWAY_TIMEOUT: "the prediction took longer than the server's limit of 60 s",
}


def error_content(code):
    """The content of an error response: the Error schema, with this status' own example."""
    status = HTTPStatus(int(code))
    example = {"error_code": status.name, "message": ERROR_MESSAGES.get(status, status.phrase.lower())}
    return {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}, "example": example}}


def request_content(request_types, example):
    """The predict body's content per media type; ``example`` ``(bytes, media type)`` shown where it can be (text)."""
    content = {t: {"schema": body_schema(t)} for t in request_types}
    if example:
        body, media_type = example
        try:
            value = json.loads(body) if body_schema(media_type) == {} else body.decode() if media_type.startswith("text/") else None
        except ValueError:  # not JSON, not UTF-8: not shown
            value = None
        if value is not None:
            content.setdefault(media_type, {"schema": body_schema(media_type)})["example"] = value
            content = {media_type: content.pop(media_type), **content}  # the UI preselects the first
    return content


def body_schema(media_type):
    """Schema of a body of ``media_type``: JSON is any JSON value, text is a string, the rest binary."""
    if is_json(media_type):
        return {}
    if media_type.startswith("text/"):
        return {"type": "string"}
    return {"type": "string", "format": "binary"}


def _operation(op, produces):
    """Translate one Swagger 2.0 operation; its responses get a content per produced type."""
    out = {k: v for k, v in op.items() if k in ("summary", "description", "operationId", "tags")}
    params = [p for p in op.get("parameters", []) if p.get("in") != "body"]
    if params:
        out["parameters"] = [
            {**{k: v for k, v in p.items() if k not in ("type", "format")}, "schema": {"type": p.get("type", "string")}}
            for p in params
        ]
    responses = {}
    for code, response in op.get("responses", {"200": {"description": "Success"}}).items():
        ok = str(code).startswith("2")
        content = {t: {"schema": body_schema(t)} for t in produces} if ok else error_content(code)
        responses[str(code)] = {"description": response.get("description", ""), **({"content": content} if content else {})}
    out["responses"] = responses
    return out


class ModelDoc(NamedTuple):
    """What the document says of one served model."""

    name: str
    request_types: list
    response_types: list
    example: tuple = None  # a predict body (bytes, media type), or None
    v2_metadata: dict = None  # its V2 metadata, or None while it loads


def openapi_spec(swagger2, models):
    """The OpenAPI 3.0 document of the API whose Swagger 2.0 document is ``swagger2``, serving ``models``
    (:class:`ModelDoc`, the first answering the routes that name no model): each model's predict routes with
    its own media types and example, and the V2 endpoints."""
    paths = {}
    for path, item in swagger2.get("paths", {}).items():
        paths[path] = {}
        for method, op in item.items():
            if method == "parameters":
                continue
            if path in SCORING_PATHS and method == "post":
                paths[path][method] = _predict_operation(op, models[0])
                for model in models:  # the same route for each model by name
                    named = "/api/models/{}/predict" if path == "/api/predict" else "/invocations/{}"
                    paths.setdefault(named.format(model.name), {})[method] = {
                        **_predict_operation(op, model), "operationId": f"{op.get('operationId', path)}_{model.name}"}
                continue
            paths[path][method] = _operation(op, [] if path in UNDESCRIBED_PATHS else ["application/json"])
    paths.update(v2_paths(models))
    return {
        "openapi": "3.0.3",
        "info": swagger2.get("info", {}),
        "servers": [{"url": swagger2.get("basePath", "/")}],
        "tags": swagger2.get("tags", []) + [{"name": V2_TAG, "description": "KServe's and Triton's protocol:"
                                                                         " tritonclient, the kserve SDK"}],
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA, **V2_SCHEMAS}},
    }


def _predict_operation(op, model):
    operation = _operation(op, model.response_types)
    operation["requestBody"] = {"required": True, "content": request_content(model.request_types, model.example)}
    return operation


V2_TAG = "Open Inference Protocol (V2)"
# The Open Inference Protocol's documents (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol).
_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                                           "INT64", "FP16", "FP32", "FP64", "BYTES"]},
    "parameters": {"type": "object", "nullable": True}, "data": {"type": "array", "items": {}}}}
V2_SCHEMAS = {
    "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "V2Tensor": _TENSOR,
    # The optional members may also be null (as absent).
    "V2InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string", "nullable": True}, "parameters": {"type": "object", "nullable": True},
        "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}},
        "outputs": {"type": "array", "nullable": True, "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object", "nullable": True}}}}}},
    "V2InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": {"type": "object"}, "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}}}},
    "V2ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}}}},
}


def _json(schema, example=None):
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"},
                                 **({"example": example} if example is not None else {})}}


def _v2_errors(*statuses):
    return {str(s.value): {"description": s.phrase, "content": _json("V2Error", {"error": ERROR_MESSAGES.get(s, s.phrase.lower())})}
            for s in statuses}


def v2_example_request(metadata):
    """An inference request of one row made from the model's metadata: zeros, empty strings, false."""
    inputs = []
    for spec in metadata.get("inputs", []):
        shape = [1 if dim == -1 else dim for dim in spec["shape"]] or [1]
        count = 1
        for dim in shape:
            count *= dim
        value = "" if spec["datatype"] == "BYTES" else False if spec["datatype"] == "BOOL" else 0
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": [value] * count})
    return {"inputs": inputs}


def v2_example(model):
    """The V2 infer example of a :class:`ModelDoc`: its plugin's example request in the one BYTES input of a plugin
    that takes request bodies (text as it is, bytes in base64), else a row of zeros made from its metadata."""
    metadata = model.v2_metadata
    if not metadata:
        return None
    inputs = metadata.get("inputs", [])
    content_type = inputs[0].get("parameters", {}).get("content_type") if len(inputs) == 1 else None
    if model.example and inputs[0]["shape"] == [-1] and inputs[0]["datatype"] == "BYTES" and content_type in ("str", "base64"):
        body = model.example[0]
        value = body.decode() if content_type == "str" else base64.b64encode(body).decode()
        return {"inputs": [{"name": inputs[0]["name"], "shape": [1], "datatype": "BYTES", "data": [value]}]}
    return v2_example_request(metadata)


def v2_paths(models):
    """The V2 endpoints' operations, per model; its metadata (None while it loads) gives the examples."""
    tag = [V2_TAG]
    version = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
    unavailable = _v2_errors(HTTPStatus.SERVICE_UNAVAILABLE)
    missing = _v2_errors(HTTPStatus.NOT_FOUND)

    def get(summary, content, errors=None, params=()):
        return {"get": {"tags": tag, "summary": summary, "parameters": list(params),
                        "responses": {"200": {"description": "OK", "content": content}, **(errors or {})}}}

    ready = {"type": "object", "properties": {"ready": {"type": "boolean"}}}
    paths = {
        "/v2": get("Server metadata: name, version, extensions", {"application/json": {"schema": {"type": "object"}}}),
        "/v2/health/live": get("Liveness", {"application/json": {"schema": {
            "type": "object", "properties": {"live": {"type": "boolean"}}}}}),
        "/v2/health/ready": get("Readiness: 503 until every model is loaded",
                                {"application/json": {"schema": ready}}, unavailable),
    }
    for model in models:
        metadata = model.v2_metadata
        infer = {"post": {
            "tags": tag, "summary": f"Score tensors with {model.name} (JSON, or binary tensors after a JSON header of"
                                   " Inference-Header-Content-Length bytes)",
            "requestBody": {"required": True, "content": {
                **_json("V2InferenceRequest", v2_example(model)),
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "OK", "content": _json("V2InferenceResponse")},
                          **_v2_errors(HTTPStatus.BAD_REQUEST, HTTPStatus.NOT_FOUND, HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                       HTTPStatus.INTERNAL_SERVER_ERROR, HTTPStatus.SERVICE_UNAVAILABLE,
                                       HTTPStatus.GATEWAY_TIMEOUT)}}}
        for prefix, params in ((f"/v2/models/{model.name}", []),
                               (f"/v2/models/{model.name}/versions/{{model_version}}", [version])):
            paths[prefix] = get(f"{model.name}'s metadata: inputs and outputs from its MLflow signature",
                                _json("V2ModelMetadata", metadata), {**missing, **unavailable}, params)
            paths[f"{prefix}/ready"] = get(f"{model.name}'s readiness", {"application/json": {"schema": ready}},
                                           {**missing, **unavailable}, params)
            paths[f"{prefix}/infer"] = {"post": {**infer["post"], "parameters": params}}
    return paths
