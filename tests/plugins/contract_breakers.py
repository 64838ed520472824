"""Plugins that break the server's contract in ways `check-plugin` must report (the model is not used)."""

from mlflow_pluggable_scoring_server.plugin import BasePlugin


class Number(BasePlugin):
    """Reads a number from a text body: int() raises ValueError on anything else, a 500."""

    def load_model(self, model_uri):
        return model_uri

    def predict(self, model, data):
        return [int(data)]

    def request_content_type(self):
        return "text/plain"


class BogusMediaTypes(Number):
    """Declares a request type that no Content-Type matches and a response wildcard."""

    def request_content_type(self):
        return ["text/plain", "json"]

    def response_content_types(self):
        return ["application/json", "image/*"]


class NoEncoder(Number):
    """Offers a type the server has no encoder for, without returning bytes."""

    def response_content_types(self):
        return ["application/json", "application/x-npy"]
