"""The ``pyfunc`` plugin: any MLflow model, scored as ``mlflow models serve`` scores it.

The request is what MLflow's ``/invocations`` takes: JSON (``dataframe_split``,
``dataframe_records``, ``instances``, ``inputs``, with ``params``), CSV or Parquet,
parsed and checked against the model's signature by MLflow's own code, so the answers
are MLflow's: ``{"predictions": ...}``. Errors keep MLflow's status and error code, but
their message never echoes the request and carries no stack trace.
"""

from typing import NamedTuple

from ..errors import ScoringError
from ..plugin import BasePlugin

# MLflow prefixes a failed prediction's message with the whole input; the reason follows this.
_ECHO_PREFIX, _REASON = "Failed to predict data", "\nError: "


class PyfuncModel(NamedTuple):
    pyfunc: object  # mlflow.pyfunc.PyFuncModel
    input_schema: object  # its signature's input schema, or None


class PyfuncPlugin(BasePlugin):
    def load_model(self, model_uri):
        import mlflow.pyfunc

        model = mlflow.pyfunc.load_model(model_uri)
        return PyfuncModel(model, model.metadata.get_input_schema())

    def predict(self, model, data):
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import invocations

        params = "".join(f"; {k}={v}" for k, v in data.media_params.items())
        try:
            result = invocations(bytes(data), f"{data.media_type}{params}", model.pyfunc, model.input_schema)
        except MlflowException as e:
            raise ScoringError(_reason(e.message), e.get_http_status_code(), e.error_code) from e
        if result.status != 200:
            raise ScoringError(result.response, result.status)
        return result.response.encode()

    def request_content_type(self):
        return ["application/json", "text/csv", "application/vnd.apache.parquet"]

    def response_content_types(self):
        return ["application/json"]


def _reason(message):
    if message.startswith(_ECHO_PREFIX) and _REASON in message:
        return message.split(_REASON, 1)[1]
    return message
