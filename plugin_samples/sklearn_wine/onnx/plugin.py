"""Sample plugin: the wine forest exported to ONNX, run with ONNX Runtime.

Same request and response as ``../plugin.py``: a JSON table in pandas' "split"
orientation in, one predicted quality per row out; it can batch, as that one does.
The session reads ``model.onnx`` straight from the MLflow model's folder: a worker
serving a local model never imports MLflow, so it starts sooner and takes less memory.
"""

from typing import NamedTuple

from mlflow_pluggable_scoring_server.decoders import read_split_frame, read_tensor_columns
from mlflow_pluggable_scoring_server.models import read_model
from mlflow_pluggable_scoring_server.plugin import BatchPlugin


class WineSession(NamedTuple):
    session: object  # an onnxruntime.InferenceSession, created once per worker
    input_name: str
    features: list  # the feature columns, in the order the model expects them
    example: bytes  # the request saved with the model (its input example), or None


class Plugin(BatchPlugin):
    def load_model(self, model_uri):
        import onnxruntime

        model = read_model(model_uri)
        options = onnxruntime.SessionOptions()
        # One thread per session: several gunicorn workers share the cores.
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(model.flavor_file("onnx"), options, providers=["CPUExecutionProvider"])
        return WineSession(session, session.get_inputs()[0].name, model.input_names(), model.serving_example())

    def preprocess(self, model, data):
        return read_split_frame(data, columns=model.features, dtype="float32")

    def preprocess_tensors(self, model, inputs, parameters):
        # Open Inference Protocol (V2) requests: one input per feature column, batched with the others.
        return read_tensor_columns(inputs, model.features, dtype="float32")

    def inference(self, model, batch):
        return model.session.run(None, {model.input_name: batch})[0].ravel()

    def request_content_type(self):
        return "application/json"

    def example_request(self, model):
        return (model.example, "application/json") if model.example else None
