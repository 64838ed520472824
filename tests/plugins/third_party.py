"""The smallest plugin a third party can write against the base class: a contract test."""

from mlflow_pluggable_scoring_server.plugin import BasePlugin


class Plugin(BasePlugin):
    def load_model(self, model_uri):
        return {"uri": model_uri}

    def predict(self, model, data):
        return [len(data)]

    def request_content_type(self):
        return ["text/plain", "application/octet-stream"]
