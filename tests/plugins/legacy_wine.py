# A plugin written as in the 2020 proof of concept: bytes in, a JSON string out. It must
# keep working unchanged, with pandas 3 too (which reads a str given to read_json as a path).
from mlflow_pluggable_scoring_server.plugin import BasePlugin

class Plugin(BasePlugin):
    def predict(self, model, data):
        import json
        import pandas as pd
        data = pd.read_json(data.decode("utf-8"), orient="split")
        if "quality" in data:
             data = data.drop(["quality"], axis=1)
        predictions = model.predict(data)
        return json.dumps(predictions.tolist())

    def load_model(self, model_uri):
        import mlflow.sklearn
        return mlflow.sklearn.load_model(model_uri)

    def request_content_type(self):
        return "application/json"
