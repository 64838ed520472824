"""The HTTP layer: a thin Flask-RESTX adapter around a :class:`~.scoring.Scorer`.

It moves bytes and headers in and out and turns every error into
``{"error_code": ..., "message": ...}``; what the request means is ``scoring.py``'s job.
"""

import functools
import hmac
import logging
import os
import sys
import time
from http import HTTPStatus

from flask import Flask, Response, g, jsonify, redirect, request
from flask_restx import Api, Resource
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import __version__
from .errors import InvalidInput, NotReady, ScoringError, Unauthorized
from .openapi import ModelDoc, openapi_spec
from .v2_endpoints import add_v2_endpoints

logger = logging.getLogger(__name__)


def error_body(e):
    """The JSON body, status and headers of any error; never a traceback, never the input."""
    headers, error_code = {}, None
    if isinstance(e, ScoringError):
        status, message, error_code = e.status_code, e.message, e.error_code
    elif isinstance(e, HTTPException):
        headers = {k: v for k, v in e.get_headers() if k.lower() == "allow"}
        status = HTTPStatus(e.code)
        # Nothing of the request is echoed, not even its path.
        message = {
            HTTPStatus.NOT_FOUND: "no such endpoint; the API is described at /api/swagger",
            HTTPStatus.METHOD_NOT_ALLOWED: "method not allowed here; allowed: "
            + ", ".join(sorted(set(getattr(e, "valid_methods", None) or []) - {"HEAD", "OPTIONS"})),
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "request body is larger than the server's limit "
            f"of {request.max_content_length} bytes",
        }.get(status, e.description)
    else:
        logger.error("unexpected error on %s %s", request.method, request.path, exc_info=e)
        status, message = HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error"
    if request.path == "/v2" or request.path.startswith("/v2/"):  # the Open Inference Protocol's shape
        return {"error": message}, status, headers
    return {"error_code": error_code or status.name, "message": message}, status, headers


def request_body(limit):
    """The request body; 413 when it is over ``limit`` bytes, chunked bodies included.

    400 when it ends before its Content-Length or its chunked framing is broken; the read
    deadline's 408 (raised by the worker's socket) passes through.
    """
    length = request.content_length
    try:
        if length is not None:
            body = request.get_data(cache=False)  # werkzeug refuses a long Content-Length unread
        else:
            body = request.environ["wsgi.input"].read(limit + 1)  # werkzeug would cut it short silently
    except (ScoringError, HTTPException):  # the read deadline's 408, werkzeug's 413
        raise
    except Exception:  # the server's reader: a malformed chunk size, a missing terminator, a reset
        raise InvalidInput("the request body cannot be read: its chunked framing is malformed or it was cut off") from None
    if length is not None and len(body) < length:
        raise InvalidInput(f"the request body ended after {len(body)} of the {length} bytes its Content-Length announced")
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def endpoint_group(path):
    """The group an endpoint belongs to, for ``public_endpoints``: health, metrics, docs or api."""
    if (path.startswith(("/api/health/", "/v2/health/")) or path in ("/ping", "/health", "/version")
            or path.startswith("/v2/models/") and path.endswith("/ready")):
        return "health"
    if path == "/metrics":
        return "metrics"
    if path in ("/", "/api/docs", "/api/swagger", "/api/swagger2.json") or path.startswith("/swaggerui/"):
        return "docs"
    return "api"


def create_app(repository, settings, metrics=None, token=None):
    """Build the Flask app serving the models of ``repository`` (a :class:`~.repository.Repository`) with the
    given :class:`~.config.Settings`.

    ``metrics``: a :class:`~.metrics.Metrics` to record into and serve at ``/metrics``.
    ``token``: the bearer token callers must send, or None for no auth.
    """
    app = Flask(__name__)
    app.extensions["mlflow_pss"] = {"repository": repository, "settings": settings}  # for the worker: readiness, read timeout
    app.json.sort_keys = False  # keep the plugin's order of media types in the spec
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        RESTX_ERROR_404_HELP=False,
        ERROR_INCLUDE_MESSAGE=False,
        PROPAGATE_EXCEPTIONS=False,
    )
    api = ScoringApi(
        app,
        version=__version__,
        title="MLflow Pluggable Scoring API",
        description="Scores an MLflow model through a plugin.",
        doc="/api/docs",
        default_swagger_filename="api/swagger2.json",
        catch_all_404s=True,
    )
    api.errorhandler(Exception)(error_body)

    @app.errorhandler(HTTPException)
    def http_error(e):
        body, status, headers = error_body(e)
        return jsonify(body), status, headers

    if token:
        expected = f"Bearer {token}".encode()
        challenge = 'Bearer realm="mlflow-pluggable-scoring-server"'

        @app.before_request
        def authenticate():
            if endpoint_group(request.path) in settings.public_endpoints:
                return None
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                body, status, _ = error_body(Unauthorized("send the server's token as 'Authorization: Bearer <token>'"))
                return jsonify(body), status, {"WWW-Authenticate": challenge}
            return None

    if metrics:
        app.before_request(lambda: setattr(g, "started", time.perf_counter()))

        @app.after_request
        def record(response):
            rule = request.url_rule.rule if request.url_rule else "unmatched"
            metrics.observe(rule, request.method, response.status_code, time.perf_counter() - g.get("started", time.perf_counter()),
                            g.get("model", ""))
            return response

        @app.get("/metrics")
        def prometheus():
            body, content_type = metrics.render()
            return Response(body, content_type=content_type)

    ns = api.namespace("api", description="Scoring", path="/api")

    def scoring_error(e):
        """The answer to a failed scoring request (already logged where it happened), counted."""
        if metrics:
            metrics.prediction_errors.labels(e.error_code, g.get("model", "")).inc()
        return error_body(e)  # Flask and Flask-RESTX views alike make the dict JSON

    def served(name=None):
        """The model a scoring request names (404 for none served here), or the first; noted for the metrics."""
        model = repository.get(name) if name is not None else repository.default
        g.model = model.name
        if model.unloaded:
            raise NotReady(f"model {model.name!r} is unloaded; POST /v2/repository/models/{model.name}/load loads it")
        return model

    def score(model=None):
        """Answer a scoring request: /api/predict, MLflow's /invocations and their routes per model alike."""
        try:
            body, media_type = served(model).scorer.score(
                request_body(settings.max_request_bytes),
                request.headers.get("Content-Type"),
                request.headers.get("Accept"),
            )
        except ScoringError as e:
            return scoring_error(e)
        return Response(body, status=200, content_type=media_type)

    for rule in ("/api/models/<model>/predict", "/invocations/<model>"):  # documented in openapi.py, per model
        app.add_url_rule(rule, endpoint=rule, view_func=score, methods=["POST"])
    v2_metadata = add_v2_endpoints(app, repository, served, lambda: request_body(settings.max_request_bytes),
                                   scoring_error, settings.model_repository)

    @ns.route("/predict")
    class Predict(Resource):
        @ns.doc(
            description="Score the request body with the plugin. Send it with one of the plugin's "
            "request media types; choose the response type with Accept.",
            responses=PREDICT_RESPONSES,
        )
        def post(self):
            return score()

    @ns.route("/status")
    class Status(Resource):
        @ns.doc(description="Process, plugins and models of the worker that answers.")
        def get(self):
            default = repository.default
            return {
                "system": {
                    "pid": os.getpid(),
                    "current_dir": os.getcwd(),
                    "python.version": sys.version,
                    "request": {"url_root": request.url_root, "remote_addr": request.remote_addr},
                    "current_logging_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                },
                "server": {"version": __version__, "workers": settings.workers},
                # The first model's, as in 2020; "models" has them all.
                "plugin": {
                    "file": default.settings.plugin,
                    "class": default.settings.plugin_class,
                    "request_content_types": default.scorer.request_types,
                    "response_content_types": default.scorer.response_types,
                },
                "model": {"uri": default.uri, "ready": default.ready},
                "models": [model.status() for model in repository],
            }

    @ns.route("/health/live")
    class Live(Resource):
        @ns.doc(description="Liveness: 200 while the worker process answers.")
        def get(self):
            return {"status": "alive"}

    def when_ready(answer):
        """``answer`` once the model is loaded; before, the 503 that tells a load balancer to wait."""
        return answer if repository.ready else error_body(NotReady("the model is still loading"))

    @ns.route("/health/ready")
    class Ready(Resource):
        @ns.doc(
            description="Readiness: 200 once the model is loaded and predictions are served, 503 before.",
            responses={200: "Ready", 503: "Model still loading"},
        )
        def get(self):
            return when_ready({"status": "ready"})

    mlflow = api.namespace("mlflow", description="MLflow's scoring server endpoints", path="/")

    @mlflow.route("/invocations")
    class Invocations(Resource):
        @mlflow.doc(
            description="MLflow's scoring endpoint: the same as /api/predict, for clients written for "
            "`mlflow models serve`.",
            responses=PREDICT_RESPONSES,
        )
        def post(self):
            return score()

    # A route doc gives each of the two paths its own operation id.
    @mlflow.route("/ping", "/health", doc={
        "description": "MLflow's health check: 200 with an empty body once the model is loaded, 503 before.",
        "responses": {200: "Ready", 503: "Model still loading"},
    })
    class Ping(Resource):
        def get(self):
            return when_ready(Response("\n", status=200, content_type="application/json"))

    @mlflow.route("/version")
    class Version(Resource):
        @mlflow.doc(description="The version of MLflow serving the model, as MLflow's server answers it.")
        def get(self):
            return Response(mlflow_version(), status=200, content_type="application/json")

    spec = {}  # the document, kept for the scorers it was made from (a rollout or a load makes others)

    @app.get("/api/swagger")
    def swagger():
        scorers = [model.scorer for model in repository]
        if spec.get("scorers") == scorers:
            return jsonify(spec["document"])
        # An unloaded model (repository extension) is not asked: its metadata would be kept without a signature.
        models = [ModelDoc(model.name, model.scorer.request_types, model.scorer.response_types,
                           model.scorer.example() if model.ready else None, v2_metadata(model) if model.ready else None)
                  for model in repository]
        document = openapi_spec(api.__schema__, models)
        if all(model.ready for model in repository):  # with every model's examples: kept
            spec.update(scorers=scorers, document=document)
        return jsonify(document)

    return app


@functools.cache
def mlflow_version():
    """The installed MLflow's version, without importing MLflow (looked up once: it scans the installed packages)."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("mlflow", "mlflow-skinny"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "unknown"


class ScoringApi(Api):
    """Flask-RESTX's Api with its Swagger UI reading our OpenAPI 3 document."""

    @property
    def specs_url(self):
        return "/api/swagger"

    def render_root(self):
        return redirect(self._doc)


_PREDICT_STATUSES = (
    HTTPStatus.OK,
    HTTPStatus.BAD_REQUEST,
    HTTPStatus.UNAUTHORIZED,
    HTTPStatus.NOT_ACCEPTABLE,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    HTTPStatus.INTERNAL_SERVER_ERROR,
    HTTPStatus.SERVICE_UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT,
)
PREDICT_RESPONSES = {status.value: status.phrase for status in _PREDICT_STATUSES}  # /api/predict, /invocations
