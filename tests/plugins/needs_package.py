"""A plugin that needs a package the test environment lacks (``roman``): for environments."""

import sys

import roman

from mlflow_pluggable_scoring_server.plugin import BasePlugin


class Plugin(BasePlugin):
    def load_model(self, model_uri):
        return model_uri

    def predict(self, model, data):
        return {"roman": roman.toRoman(len(data)), "prefix": sys.prefix}

    def request_content_type(self):
        return "text/plain"
