"""The Open Inference Protocol's REST endpoints (V2, as KServe, Triton and MLServer speak it), beside the others.

Each endpoint only maps HTTP to the scorer and back: the protocol's JSON and binary tensors are
read and written by :mod:`.v2`, the model is called by :meth:`.scoring.Scorer.infer`. Errors are
``{"error": "..."}`` with their status (see ``app.error_body``), as the protocol says.
"""

import threading
from http import HTTPStatus

from flask import jsonify

from . import __version__
from .errors import NotReady, ScoringError
from .media import is_text

SERVER_NAME = "mlflow-pluggable-scoring-server"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "mlflow"
# What a plugin with no V2 method of its own takes (Scorer.infer): one BYTES input, each element a request body.
BODIES_INPUT = {"name": "input-0", "datatype": "BYTES", "shape": [-1]}


class NotFound(ScoringError):
    status_code = HTTPStatus.NOT_FOUND


def check_version(scorer, name, version):
    """404 unless model ``name``'s ``scorer`` is at ``version``, when one is asked for (known once it is loaded)."""
    if version is not None and scorer.ready.is_set() and version != scorer.version:
        known = f"version {scorer.version}" if scorer.version else "no registry version"
        raise NotFound(f"model {name!r} has no such version here; it is served at {known}")


def add_v2_endpoints(app, repository, served, infer, on_error, repository_extension=False):
    """Add the V2 endpoints to ``app``, for the models of ``repository``. ``served(name)`` is the model of that
    name (404 for none), noted for the metrics; ``infer`` is the view of the infer routes (answered by
    :mod:`.scoring_routes` before Flask); ``on_error(e)`` renders a :class:`ScoringError` (and counts it);
    ``repository_extension``: add the model repository extension's endpoints. Returns a function giving a
    served model's V2 metadata once it is loaded."""
    metadata_lock = threading.Lock()

    def loaded(name, version):
        """The model named ``name``, served at ``version`` if given."""
        model = served(name)
        check_version(model.scorer, model.name, version)
        return model

    def model_metadata(model):
        from .v2 import model_metadata as build

        scorer = model.scorer  # a rollout replaces it, and the metadata with it
        with metadata_lock:
            if model.metadata is None or model.metadata[0] is not scorer:
                metadata = build(model.name, [scorer.version] if scorer.version else [], scorer.signature, PLATFORM)
                if not scorer.takes_tensors:  # the signature's outputs are still the model's answer
                    content_type = "str" if is_text(scorer.body_media_type) else "base64"  # how JSON carries them
                    metadata.update(inputs=[{**BODIES_INPUT, "parameters": {"content_type": content_type}}],
                                    parameters={})
                model.metadata = (scorer, metadata)
            return model.metadata[1]

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
        extensions = EXTENSIONS + (["model_repository"] if repository_extension else [])
        return jsonify({"name": SERVER_NAME, "version": __version__, "extensions": extensions})

    def repository_index():
        return jsonify(repository.index())

    def load(model):
        repository.set_state(repository.get(model).name, True, repository.metrics)
        return jsonify({})

    def unload(model):
        repository.set_state(repository.get(model).name, False, repository.metrics)
        return jsonify({})

    def live():
        return jsonify({"live": True})

    def ready():
        is_ready = repository.ready
        return jsonify({"ready": is_ready}), 200 if is_ready else 503

    def model_ready(model, version=None):
        model = loaded(model, version)
        return jsonify({"name": model.name, "ready": model.ready}), 200 if model.ready else 503

    def model_metadata_view(model, version=None):
        model = loaded(model, version)
        if not model.ready:
            raise NotReady("the model is still loading; retry shortly")
        return jsonify(model_metadata(model))

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
    if repository_extension:
        routes += [
            ("/v2/repository/index", repository_index, "POST"),
            ("/v2/repository/models/<model>/load", load, "POST"),
            ("/v2/repository/models/<model>/unload", unload, "POST"),
        ]
    for rule, view, method in routes:
        app.add_url_rule(rule, endpoint=f"v2:{rule}", view_func=view if view is infer else endpoint(view), methods=[method])
    return model_metadata
