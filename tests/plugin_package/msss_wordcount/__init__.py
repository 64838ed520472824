"""A plugin in a package of its own: the number of words of a UTF-8 text, beside the model's URI."""

from mlflow_pluggable_scoring_server.errors import InvalidInput
from mlflow_pluggable_scoring_server.plugin import BasePlugin


class WordCountPlugin(BasePlugin):
    def load_model(self, model_uri):
        return model_uri

    def predict(self, model, data):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("request body is not UTF-8 text") from None
        return {"words": len(text.split()), "model_uri": model}

    def request_content_type(self):
        return "text/plain"
