"""Sample plugin: white-wine quality from a scikit-learn forest, for a JSON table.

The request is pandas' "split" orientation (``data/predict-wine-quality.json``); the
feature columns are read by name, so their order does not matter and a ``quality``
column is ignored. The response is one predicted quality per row. It can batch: with
``--max-batch-size``, the rows of concurrent requests go through the forest in one call.
"""

from typing import NamedTuple

from mlflow_pluggable_scoring_server.decoders import read_split_frame, read_tensor_columns
from mlflow_pluggable_scoring_server.models import fetch_model, serving_example
from mlflow_pluggable_scoring_server.plugin import BatchPlugin


class WineForest(NamedTuple):
    forest: object
    features: list  # the feature columns, in the order the forest was trained on
    example: bytes  # the request saved with the model (its input example), or None


class Plugin(BatchPlugin):
    def load_model(self, model_uri):
        import mlflow.sklearn

        path, mlmodel = fetch_model(model_uri)
        return WineForest(mlflow.sklearn.load_model(path), mlmodel.signature.inputs.input_names(), serving_example(path))

    def fork_safe(self, model_uri):
        # A forest is arrays and Python objects, no thread or connection: loaded once, before the
        # workers fork, and shared by them.
        return True

    def preprocess(self, model, data):
        return read_split_frame(data, columns=model.features)

    def preprocess_tensors(self, model, inputs, parameters):
        # Open Inference Protocol (V2) requests: one input per feature column, batched with the others.
        return read_tensor_columns(inputs, model.features)

    def inference(self, model, batch):
        return model.forest.predict(batch)

    def request_content_type(self):
        return "application/json"

    def example_request(self, model):
        # Shown by the Swagger UI, sent by check-plugin: MLflow's {"dataframe_split": ...} is read as a table too.
        return (model.example, "application/json") if model.example else None
