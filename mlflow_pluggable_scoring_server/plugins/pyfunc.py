"""The ``pyfunc`` plugin: any MLflow model, scored as ``mlflow models serve`` scores it.

The request is what MLflow's ``/invocations`` takes: JSON (``dataframe_split``,
``dataframe_records``, ``instances``, ``inputs``, with ``params``), CSV or Parquet,
parsed and checked against the model's signature by MLflow's own code, so the answers
are MLflow's: ``{"predictions": ...}``, byte for byte. Errors keep MLflow's status and
error code, but their message never quotes the request and carries no stack trace.
"""

import json
import logging
import re
from typing import NamedTuple

from ..errors import ScoringError, UnsupportedMediaType
from ..models import load_pyfunc, read_model
from ..plugin import BasePlugin

logger = logging.getLogger(__name__)

# Where MLflow's messages quote the request as a whole: the undecodable body after
# "Input:", the input frame between "of data '" and its schema (greedy: the frame may hold quotes).
_ECHOES = ((re.compile(r"\nInput: .*", re.S), ""), (re.compile(r"of data '.*' with schema '", re.S), "of the input with schema '"))
# Anything else (values, column names quoted in an inner error) is caught token by token.
_TOKEN = re.compile(r"\w{2,}")
_QUOTE = re.compile(r"['\"]")
# The loaders of flavors that start no thread and hold no connection when they load: a worker may share their model.
FORK_SAFE_LOADERS = frozenset({"mlflow.sklearn"})
# The protocol's own keys: a message naming them does not quote the request.
_PROTOCOL = frozenset({"dataframe_split", "dataframe_records", "instances", "inputs", "params", "columns", "data", "index"})


class PyfuncModel(NamedTuple):
    pyfunc: object  # mlflow.pyfunc.PyFuncModel
    input_schema: object  # its signature's input schema, or None
    names: frozenset  # the signature's input and param names: quoting them does not quote the request


class PyfuncPlugin(BasePlugin):
    def fork_safe(self, model_uri):
        """A scikit-learn model (MLflow's loader for it imports scikit-learn and unpickles): shared by the workers."""
        return read_model(model_uri).flavors.get("python_function", {}).get("loader_module") in FORK_SAFE_LOADERS

    def load_model(self, model_uri):
        import os

        from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
        from mlflow.pyfunc.scoring_server import load_model_with_mlflow_config

        # As `mlflow models serve` does: some flavors behave differently when serving.
        os.environ[_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name] = "true"
        model = load_pyfunc(model_uri, load_model_with_mlflow_config)
        schema, params = model.metadata.get_input_schema(), model.metadata.get_params_schema()
        names = (schema.input_names() if schema and schema.has_input_names() else []) + (
            [p.name for p in params.params] if params else [])
        return PyfuncModel(model, schema, frozenset(map(str, names)))

    def predict(self, model, data):
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import invocations

        check_charset(data.media_params)
        try:
            result = invocations(bytes(data), data.media_type, model.pyfunc, model.input_schema)
        except MlflowException as e:
            message = safe_message(e, data, model.names)
            logger.info("MLflow refused a %s request: %s", data.media_type, message)
            raise ScoringError(message, e.get_http_status_code(), e.error_code) from e
        if result.status != 200:  # MLflow's own content-type refusals, which quote the header
            raise ScoringError("MLflow cannot score this request", result.status)
        return result.response.encode()

    def request_content_type(self):
        return ["application/json", "text/csv", "application/vnd.apache.parquet"]

    def response_content_types(self):
        return ["application/json"]

    def predict_v2(self, model, request):
        """An Open Inference Protocol request, turned into the model input MLServer's MLflow runtime builds
        (a DataFrame for a column signature, an array or a dict of arrays for tensors); its parameters are
        pyfunc ``params``. Returns the model's answer."""
        from mlflow.exceptions import MlflowException

        from ..v2 import to_model_input

        data, params = to_model_input(request, model.pyfunc.metadata.signature)
        try:
            return model.pyfunc.predict(data, params=params)
        except MlflowException as e:
            # Everything the message must not quote: the values and the parameters (MLflow quotes a bad param's value).
            values = [tensor.data.reshape(-1).tolist() for tensor in request.inputs] + [request.parameters]
            message = safe_message(e, json.dumps(values, default=_as_text).encode(), model.names)
            logger.info("MLflow refused a V2 request: %s", message)
            raise ScoringError(message, e.get_http_status_code(), e.error_code) from e

    def signature(self, model):
        """The model's MLflow signature: the V2 metadata's inputs and outputs."""
        return model.pyfunc.metadata.signature

    def example_request(self, model):
        """The input example saved with the model, as `mlflow models serve` takes it."""
        from mlflow.models.utils import convert_input_example_to_serving_input

        example = model.pyfunc.input_example
        serving = convert_input_example_to_serving_input(example) if example is not None else None
        return (serving.encode(), "application/json") if serving else None


def _as_text(value):
    """A value json.dumps cannot write, as the text a message would quote it as (bytes decoded)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def check_charset(media_params):
    """MLflow's rule for Content-Type parameters: charset only, and only UTF-8 (else 415)."""
    if media_params.get("charset", "utf-8").lower() != "utf-8":
        raise UnsupportedMediaType("the scoring server only supports UTF-8: send charset=utf-8 or no charset")
    if set(media_params) - {"charset"}:
        raise UnsupportedMediaType("unrecognized Content-Type parameters: only charset is allowed")


def safe_message(error, body, names=frozenset()):
    """MLflow's message for ``error`` without any part of the request ``body``.

    MLflow prefixes a failed prediction's message with the whole input (``e.message``;
    the original is still ``e.args[0]``), appends an undecodable body, quotes the input
    frame, and inner errors quote values or column names. The first two are removed; the
    message is then cut where it first names a token of the body that is neither one of
    the model's input or param ``names`` nor a key of MLflow's protocol.
    """
    if isinstance(error.__cause__, UnicodeDecodeError):  # its message holds the bytes
        cause = error.__cause__
        return f"Invalid input. The request is not valid UTF-8: {cause.reason} at byte {cause.start}."
    message = str(error.args[0] if error.args else error.message)
    for echo, replacement in _ECHOES:
        message = echo.sub(replacement, message, count=1)
    allowed = _PROTOCOL | {token for name in names for token in _TOKEN.findall(name)}
    suspects = {m.group(): m.start() for m in reversed(list(_TOKEN.finditer(message))) if m.group() not in allowed}
    echoed = _first_in(body, suspects)
    cuts = [suspects[echoed]] if echoed is not None else []
    quoted = _first_quoted_value(message, body.decode("utf-8", "replace"), names | _PROTOCOL)
    cuts += [quoted] if quoted is not None else []
    if not cuts:
        return message
    return message[:min(cuts)].rstrip(" :[({'\"") + " (the rest quotes the request and is withheld)"


def _first_quoted_value(message, body_text, names):
    """Where ``message`` first quotes a value of the body (``'a b c'``, ``'1.2.3'``, ``'~!@#$%'``: values
    the word tokens above miss), or None. A name of the model's inputs or of the protocol is no value."""
    fields = None
    for quote in _QUOTE.finditer(message):
        end = message.find(quote.group(), quote.end())
        if end < 0:
            continue
        content = message[quote.end():end]
        if not content.strip(" ,:;[](){}") or content in names:
            continue
        if json.dumps(content) in body_text or (len(content.strip()) >= 3 and content in body_text):
            return quote.start()
        fields = fields if fields is not None else {f.strip() for f in re.split(r"[,\r\n]", body_text)}
        if content.strip() in fields:  # a CSV field, however short
            return quote.start()
    return None


def _first_in(body, tokens):
    """The one of ``tokens`` (a dict token -> position) first in the message that is a token of ``body``."""
    found = {m.group() for m in _TOKEN.finditer(body.decode("utf-8", "replace")) if m.group() in tokens}
    return min(found, key=tokens.get, default=None)
