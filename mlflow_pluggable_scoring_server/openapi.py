"""The API's OpenAPI 3 document, built from Flask-RESTX's Swagger 2.0 one.

Swagger 2.0 cannot describe a raw binary body (only multipart uploads), so Swagger
UI would show a text box for an image. OpenAPI 3 can: the predict body is declared
with the plugin's media types, binary ones as ``format: binary``, and the UI offers
a file picker for them.
"""

SCORING_PATHS = ("/api/predict", "/invocations")  # /invocations: MLflow's name for the same endpoint
# MLflow's answers here are labelled application/json but are not JSON ("\n", "3.1.0"), so
# their success is declared without a body schema that clients would try to parse.
UNDESCRIBED_PATHS = ("/ping", "/health", "/version")

import json
from http import HTTPStatus

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
    if media_type == "application/json" or media_type.endswith("+json"):
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


def openapi_spec(swagger2, request_types, response_types, example=None):
    """The OpenAPI 3.0 document of the API whose Swagger 2.0 document is ``swagger2``;
    ``example``: a predict body ``(bytes, media type)`` to show, or None."""
    paths = {}
    for path, item in swagger2.get("paths", {}).items():
        paths[path] = {}
        for method, op in item.items():
            if method == "parameters":
                continue
            predict = path in SCORING_PATHS and method == "post"
            produces = response_types if predict else [] if path in UNDESCRIBED_PATHS else ["application/json"]
            operation = _operation(op, produces)
            if predict:
                operation["requestBody"] = {"required": True, "content": request_content(request_types, example)}
            paths[path][method] = operation
    return {
        "openapi": "3.0.3",
        "info": swagger2.get("info", {}),
        "servers": [{"url": swagger2.get("basePath", "/")}],
        "tags": swagger2.get("tags", []),
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }
