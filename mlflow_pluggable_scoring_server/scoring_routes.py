"""POST on the scoring routes, answered as plain WSGI in front of the Flask app: the server's hot path.

A scoring request (``/api/predict``, MLflow's ``/invocations``, their routes per model, and V2's
``infer``) is answered here, before Flask sees it: no request context, no Flask-RESTX dispatch,
no hooks. That is most of what the web layers cost a small prediction (bench/README.md). Every
other request goes on to the Flask app, which keeps these routes too: for the API document, and
to answer their other methods (405, OPTIONS) and their misspellings (a trailing slash) as it did.

A scoring request gets the same here as from any Flask route: the bearer token checked, the body
read within the server's limit, metrics by route template, and every error as JSON with its
status, never quoting the request.
"""

import hmac
import json
import logging
import re
import time
from http import HTTPStatus

from .errors import InvalidInput, NotReady, ScoringError, TooLarge, Unauthorized
from .v2_endpoints import check_version

logger = logging.getLogger(__name__)

CHALLENGE = 'Bearer realm="mlflow-pluggable-scoring-server"'
HEADER_LENGTH = "Inference-Header-Content-Length"
# The routes that name a model, as Flask's rules match them (a name is one path segment).
NAMED_ROUTES = re.compile(r"/(?:api/models/(?P<predict>[^/]+)/predict|invocations/(?P<invocations>[^/]+)"
                          r"|v2/models/(?P<v2>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer)")
DIGITS = re.compile(r"\s*[0-9]+\s*")  # int() takes other digits, str.isdigit others


def token_matches(given, expected):
    """Whether the Authorization header's value ``given`` is ``expected`` (bytes), compared in constant time."""
    return hmac.compare_digest(given.encode(), expected)


def error_json(e, path):
    """The JSON body and status of the ScoringError ``e`` answered on ``path``: V2's ``{"error"}`` under /v2."""
    if path == "/v2" or path.startswith("/v2/"):  # the Open Inference Protocol's shape
        return {"error": e.message}, e.status_code
    return {"error_code": e.error_code, "message": e.message}, e.status_code


def read_body(environ, limit):
    """The request body; 413 when it is over ``limit`` bytes, chunked bodies included.

    400 when it ends before its Content-Length or its chunked framing is broken; the read
    deadline's 408 (raised by the worker's socket) passes through.
    """
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        length = None
    if length is not None and length < 0:
        length = None
    if length is not None and length > limit:
        raise TooLarge(limit)  # refused unread; the worker closes the connection
    try:
        body = environ["wsgi.input"].read(length if length is not None else limit + 1)
    except ScoringError:  # the read deadline's 408
        raise
    except Exception:  # the server's reader: a malformed chunk size, a missing terminator, a reset
        raise InvalidInput("the request body cannot be read: its chunked framing is malformed or it was cut off") from None
    if length is not None and len(body) < length:
        raise InvalidInput(f"the request body ended after {len(body)} of the {length} bytes its Content-Length announced")
    if len(body) > limit:
        raise TooLarge(limit)
    return body


class ScoringRoutes:
    """WSGI middleware: answers POST on the scoring routes of ``repository``, passes the rest to ``app``.

    ``settings``: the server's :class:`~.config.Settings`; ``metrics``: a :class:`~.metrics.Metrics` or None;
    ``token``: the bearer token callers must send, or None.
    """

    def __init__(self, app, repository, settings, metrics=None, token=None):
        self.app = app
        self.repository = repository
        self.limit = settings.max_request_bytes
        self.metrics = metrics
        # The scoring routes are in the "api" group: checked unless that group is public.
        self.expected = f"Bearer {token}".encode() if token and "api" not in settings.public_endpoints else None
        self.exact = {"/api/predict": self.predict, "/invocations": self.predict}

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] != "POST":
            return self.app(environ, start_response)
        path = environ.get("PATH_INFO", "")  # a model's name is ASCII (config.py): no need to decode UTF-8 here
        view, rule, args = self.exact.get(path), path, ()
        if view is None:
            named = NAMED_ROUTES.fullmatch(path)
            if named is None:
                return self.app(environ, start_response)
            view, rule, args = self.route(named)
        return self.answer(environ, start_response, path, rule, view, args)

    def route(self, named):
        """The view, route template and arguments of a path that names its model."""
        if named["predict"] is not None:
            return self.predict, "/api/models/<model>/predict", (named["predict"],)
        if named["invocations"] is not None:
            return self.predict, "/invocations/<model>", (named["invocations"],)
        if named["version"] is not None:
            return self.infer, "/v2/models/<model>/versions/<version>/infer", (named["v2"], named["version"])
        return self.infer, "/v2/models/<model>/infer", (named["v2"],)

    def answer(self, environ, start_response, path, rule, view, args):
        started = time.perf_counter()
        served = []  # the model the request went to, once known: the metrics' label
        headers = []
        try:
            if self.expected is not None and not token_matches(environ.get("HTTP_AUTHORIZATION", ""), self.expected):
                headers.append(("WWW-Authenticate", CHALLENGE))
                raise Unauthorized()
            try:
                status, body, headers = view(environ, served, *args)
            except ScoringError as e:
                if self.metrics:
                    self.metrics.prediction_errors.labels(e.error_code, served[0] if served else "").inc()
                raise
        except ScoringError as e:
            document, status = error_json(e, path)
            body = (json.dumps(document) + "\n").encode()
            headers.append(("Content-Type", "application/json"))
        except Exception as e:
            logger.error("unexpected error on POST %s", rule, exc_info=e)
            document, status = error_json(ScoringError("internal server error"), path)
            body, headers = (json.dumps(document) + "\n").encode(), [("Content-Type", "application/json")]
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status.value} {status.phrase}", headers)
        if self.metrics:
            self.metrics.observe(rule, "POST", status.value, time.perf_counter() - started, served[0] if served else "")
        return [body]

    def served(self, name, served):
        """The model a request names (404 for none served here), or the first; noted for the metrics."""
        model = self.repository.get(name) if name is not None else self.repository.default
        served.append(model.name)
        if model.unloaded:
            raise NotReady(f"model {model.name!r} is unloaded; POST /v2/repository/models/{model.name}/load loads it")
        return model

    def predict(self, environ, served, name=None):
        """/api/predict, MLflow's /invocations and their routes per model."""
        body, media_type = self.served(name, served).scorer.score(
            read_body(environ, self.limit), environ.get("CONTENT_TYPE"), environ.get("HTTP_ACCEPT"))
        return HTTPStatus.OK, body, [("Content-Type", media_type)]

    def infer(self, environ, served, name, version=None):
        """V2's infer, JSON or binary tensors."""
        from .v2 import decode_request, encode_response, from_model_output

        model = self.served(name, served)
        scorer = model.scorer  # this request's, whatever a rollout does meanwhile
        check_version(scorer, model.name, version)
        if not scorer.ready.is_set():
            raise NotReady("the model is still loading; retry shortly")
        header_length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
        if header_length is not None:
            if not DIGITS.fullmatch(header_length):
                raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer")
            header_length = int(header_length)
        inference = decode_request(read_body(environ, self.limit), header_length)
        outputs = from_model_output(scorer.infer(inference))
        body, headers = encode_response(model.name, scorer.version, outputs, id=inference.id,
                                        requested=inference.outputs, binary_data_output=inference.binary_data_output)
        return HTTPStatus.OK, body, list(headers.items())
