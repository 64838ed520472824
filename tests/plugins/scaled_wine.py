"""A plugin with an option: the wine forest's predictions times ``scale`` (to see options arrive, typed)."""

import mlflow.sklearn

from mlflow_pluggable_scoring_server.decoders import read_split_frame
from mlflow_pluggable_scoring_server.plugin import BasePlugin

FEATURES = 11


class Plugin(BasePlugin):
    def __init__(self, scale=1):
        if not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a number, not {scale!r}")
        self.scale = scale

    def load_model(self, model_uri):
        return mlflow.sklearn.load_model(model_uri)

    def predict(self, model, data):
        return model.predict(read_split_frame(data)[:, :FEATURES]) * self.scale

    def request_content_type(self):
        return "application/json"
