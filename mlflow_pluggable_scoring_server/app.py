"""The HTTP layer: a thin Flask-RESTX adapter around a :class:`~.scoring.Scorer`.

It moves bytes and headers in and out and turns every error into
``{"error_code": ..., "message": ...}``; what the request means is ``scoring.py``'s job.
"""

import logging
import os
import sys
from http import HTTPStatus

from flask import Flask, Response, jsonify, redirect, request
from flask_restx import Api, Resource
from werkzeug.exceptions import HTTPException

from . import __version__
from .errors import ScoringError
from .openapi import openapi_spec

logger = logging.getLogger(__name__)


def error_body(e):
    """The JSON body and status of any error; never a traceback, never the input."""
    if isinstance(e, ScoringError):
        status, message = e.status_code, e.message
    elif isinstance(e, HTTPException):
        status = HTTPStatus(e.code)
        message = {
            HTTPStatus.NOT_FOUND: f"no such endpoint: {request.method} {request.path}",
            HTTPStatus.METHOD_NOT_ALLOWED: f"method {request.method} is not allowed on {request.path}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "request body is larger than the server's limit "
            f"of {request.max_content_length} bytes",
        }.get(status, e.description)
    else:
        logger.error("unexpected error on %s %s", request.method, request.path, exc_info=e)
        status, message = HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error"
    return {"error_code": status.name, "message": message}, status


def create_app(scorer, settings):
    """Build the Flask app serving ``scorer`` with the given :class:`~.config.Settings`."""
    app = Flask(__name__)
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
        body, status = error_body(e)
        return jsonify(body), status

    ns = api.namespace("api", description="Scoring", path="/api")

    @ns.route("/predict")
    class Predict(Resource):
        @ns.doc(
            description="Score the request body with the plugin. Send it with one of the plugin's "
            "request media types; choose the response type with Accept.",
            responses={status.value: status.phrase for status in _PREDICT_STATUSES},
        )
        def post(self):
            try:
                body, media_type = scorer.score(
                    request.get_data(cache=False),
                    request.headers.get("Content-Type"),
                    request.headers.get("Accept"),
                )
            except ScoringError as e:  # already logged where it happened
                return error_body(e)
            return Response(body, status=200, content_type=media_type)

    @ns.route("/status")
    class Status(Resource):
        @ns.doc(description="Process, plugin and model of the worker that answers.")
        def get(self):
            return {
                "system": {
                    "pid": os.getpid(),
                    "current_dir": os.getcwd(),
                    "python.version": sys.version,
                    "request": {"url_root": request.url_root, "remote_addr": request.remote_addr},
                    "current_logging_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                },
                "server": {"version": __version__, "workers": settings.workers},
                "plugin": {
                    "file": settings.plugin,
                    "class": settings.plugin_class,
                    "request_content_types": scorer.request_types,
                    "response_content_types": scorer.response_types,
                },
                "model": {"uri": settings.model_uri},
            }

    spec = {}

    @app.get("/api/swagger")
    def swagger():
        if not spec:
            spec.update(openapi_spec(api.__schema__, scorer.request_types, scorer.response_types))
        return jsonify(spec)

    return app


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
    HTTPStatus.NOT_ACCEPTABLE,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    HTTPStatus.INTERNAL_SERVER_ERROR,
)
