"""The HTTP layer: a thin Flask-RESTX adapter around a :class:`~.scoring.Scorer`.

It moves bytes and headers in and out and turns every error into
``{"error_code": ..., "message": ...}``; what the request means is ``scoring.py``'s job.
"""

import functools
import logging
import os
import sys
import time
from http import HTTPStatus

from flask import Flask, Response, g, jsonify, redirect, request
from flask_restx import Api, Resource
from werkzeug.exceptions import HTTPException

from . import __version__
from .errors import NotReady, ScoringError, TooLarge, Unauthorized
from .openapi import ModelDoc, openapi_spec
from .scoring_routes import CHALLENGE, ScoringRoutes, error_json, token_matches
from .v2_endpoints import add_v2_endpoints

logger = logging.getLogger(__name__)


def error_body(e):
    """The JSON body, status and headers of any error; never a traceback, never the input."""
    if isinstance(e, ScoringError):
        body, status = error_json(e, request.path)
        return body, status, {}
    if isinstance(e, HTTPException):
        headers = {k: v for k, v in e.get_headers() if k.lower() == "allow"}
        status = HTTPStatus(e.code)
        # Nothing of the request is echoed, not even its path.
        message = {
            HTTPStatus.NOT_FOUND: "no such endpoint; the API is described at /api/swagger",
            HTTPStatus.METHOD_NOT_ALLOWED: "method not allowed here; allowed: "
            + ", ".join(sorted(set(getattr(e, "valid_methods", None) or []) - {"HEAD", "OPTIONS"})),
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE: TooLarge(request.max_content_length).message,
        }.get(status, e.description)
        body, status = error_json(ScoringError(message, status), request.path)
        return body, status, headers
    logger.error("unexpected error on %s %s", request.method, request.path, exc_info=e)
    body, status = error_json(ScoringError("internal server error"), request.path)
    return body, status, {}


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

        @app.before_request
        def authenticate():
            if endpoint_group(request.path) in settings.public_endpoints:
                return None
            if not token_matches(request.headers.get("Authorization", ""), expected):
                body, status, _ = error_body(Unauthorized())
                return jsonify(body), status, {"WWW-Authenticate": CHALLENGE}
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

    # POST on the scoring routes is answered in front of Flask (scoring_routes.py); their views here are
    # for the API document, other methods and misspelled paths, and pass a POST that reaches them back.
    routes = app.wsgi_app = ScoringRoutes(app.wsgi_app, repository, settings, metrics, token)

    def score(**kwargs):
        return Response.from_app(routes, request.environ)

    def served(name=None):
        """The model a request names (404 for none served here), or the first; noted for the metrics."""
        noted = []
        try:
            return routes.served(name, noted)
        finally:
            g.model = noted[0] if noted else ""

    for rule in ("/api/models/<model>/predict", "/invocations/<model>"):  # documented in openapi.py, per model
        app.add_url_rule(rule, endpoint=rule, view_func=score, methods=["POST"])
    v2_metadata = add_v2_endpoints(app, repository, served, score, scoring_error, settings.model_repository)

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
