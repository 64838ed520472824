"""A plugin that imports prometheus_client when its module is imported, as a plugin exporting its own metrics would."""

import prometheus_client  # noqa: F401 -- the point: imported before the server's own metrics

from mlflow_pluggable_scoring_server.decoders import read_split_frame
from mlflow_pluggable_scoring_server.plugin import BasePlugin


class Plugin(BasePlugin):
    def load_model(self, model_uri):
        import mlflow.sklearn

        return mlflow.sklearn.load_model(model_uri)

    def predict(self, model, data):
        return model.predict(read_split_frame(data)[:, :11])

    def request_content_type(self):
        return "application/json"
