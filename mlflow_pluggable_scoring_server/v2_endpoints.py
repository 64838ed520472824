"""The Open Inference Protocol's REST endpoints (V2, as KServe, Triton and MLServer speak it), beside the others.

Each endpoint only maps HTTP to the scorer and back: the protocol's JSON and binary tensors are
read and written by :mod:`.v2`, the model is called by :meth:`.scoring.Scorer.infer`. Errors are
``{"error": "..."}`` with their status (see ``app.error_body``), as the protocol says.
"""

import threading
from http import HTTPStatus

from flask import Response, jsonify, request

from . import __version__
from .errors import InvalidInput, NotReady, ScoringError
from .models import model_name

SERVER_NAME = "mlflow-pluggable-scoring-server"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORM = "mlflow"


class NotFound(ScoringError):
    status_code = HTTPStatus.NOT_FOUND


def served_name(settings):
    """The model's name in V2 paths: ``model_name``, else the registered model's, else ``mlflow-model``."""
    return settings.model_name or model_name(settings.model_uri)


def add_v2_endpoints(app, scorer, settings, read_body, on_error):
    """Add the V2 endpoints to ``app``. ``read_body()`` reads a request body within the server's limit;
    ``on_error(e)`` renders a :class:`ScoringError` (and counts it). Returns ``(the model's name, a function
    giving its V2 metadata once it is loaded)``."""
    name = served_name(settings)
    metadata, metadata_lock = {}, threading.Lock()

    def check_model(model, version):
        if model != name:
            raise NotFound(f"no such model here; this server serves {name!r}")  # the path is not quoted back
        if version is not None and version != scorer.version:
            known = f"version {scorer.version}" if scorer.version else "no registry version"
            raise NotFound(f"model {name!r} has no such version here; it is served at {known}")

    def model_metadata():
        from .v2 import model_metadata as build

        with metadata_lock:
            if not metadata:
                metadata.update(build(name, [scorer.version] if scorer.version else [], scorer.signature, PLATFORM))
        return metadata

    def endpoint(view):
        """A V2 view: what it raises is answered in V2's error shape."""
        def answer(**kwargs):
            try:
                return view(**kwargs)
            except ScoringError as e:
                return on_error(e)
        answer.__name__ = f"v2_{view.__name__}"
        return answer

    def server_metadata():
        return jsonify({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})

    def live():
        return jsonify({"live": True})

    def ready():
        is_ready = scorer.ready.is_set()
        return jsonify({"ready": is_ready}), 200 if is_ready else 503

    def model_ready(model, version=None):
        check_model(model, version)
        is_ready = scorer.ready.is_set()
        return jsonify({"name": name, "ready": is_ready}), 200 if is_ready else 503

    def model_metadata_view(model, version=None):
        check_model(model, version)
        if not scorer.ready.is_set():
            raise NotReady("the model is still loading; retry shortly")
        return jsonify(model_metadata())

    def infer(model, version=None):
        from .v2 import decode_request, encode_response, from_model_output

        check_model(model, version)
        if not scorer.ready.is_set():
            raise NotReady("the model is still loading; retry shortly")
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None:
            if not header_length.strip().isdigit():
                raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer")
            header_length = int(header_length)
        inference = decode_request(read_body(), header_length)
        outputs = from_model_output(scorer.infer(inference))
        body, headers = encode_response(name, scorer.version, outputs, id=inference.id, requested=inference.outputs,
                                        binary_data_output=inference.binary_data_output)
        return Response(body, status=200, headers=headers)

    routes = [
        ("/v2", server_metadata, "GET"),
        ("/v2/health/live", live, "GET"),
        ("/v2/health/ready", ready, "GET"),
        ("/v2/models/<model>", model_metadata_view, "GET"),
        ("/v2/models/<model>/versions/<version>", model_metadata_view, "GET"),
        ("/v2/models/<model>/ready", model_ready, "GET"),
        ("/v2/models/<model>/versions/<version>/ready", model_ready, "GET"),
        ("/v2/models/<model>/infer", infer, "POST"),
        ("/v2/models/<model>/versions/<version>/infer", infer, "POST"),
    ]
    for rule, view, method in routes:
        app.add_url_rule(rule, endpoint=f"v2:{rule}", view_func=endpoint(view), methods=[method])
    return name, model_metadata
