# A plugin written as in the 2020 proof of concept: bytes in, a JSON string out. It must
# keep working unchanged. (Only StringIO is new: pandas 3 no longer reads literal JSON text.)
from mlflow_pluggable_scoring_server.plugin import BasePlugin

class Plugin(BasePlugin):
    def predict(self, model, data):
        import json
        import pandas as pd
        from io import StringIO
        data = data.decode("utf-8")
        data = pd.read_json(StringIO(data), orient="split")
        if "quality" in data:
             data = data.drop(["quality"], axis=1)
        predictions = model.predict(data)
        return json.dumps(predictions.tolist())

    def load_model(self, model_uri):
        import mlflow.sklearn
        return mlflow.sklearn.load_model(model_uri)

    def request_content_type(self):
        return "application/json"
