"""A batchable plugin around the real wine model that misbehaves on purpose for marked rows."""

import time
from typing import NamedTuple

import numpy as np

from mlflow_pluggable_scoring_server.decoders import read_json, read_split_frame
from mlflow_pluggable_scoring_server.errors import InvalidInput
from mlflow_pluggable_scoring_server.models import fetch_model
from mlflow_pluggable_scoring_server.plugin import BatchPlugin

MARKS = ["sleep", "fail", "invalid"]


class WineForest(NamedTuple):
    forest: object
    features: list


class Marked(BatchPlugin):
    """The wine forest on DataFrames (so the default stack and split of frames), batching by default.

    Optional columns act in ``inference``, on the whole batch their row is in: ``sleep`` s
    sleeps s seconds, ``fail`` 1 raises RuntimeError, ``invalid`` 1 raises InvalidInput.
    The answer is ``[{"quality": q}, ...]``, one per row.
    """

    max_batch_size = 8
    max_batch_time_ms = 20

    def load_model(self, model_uri):
        import mlflow.sklearn

        path, mlmodel = fetch_model(model_uri)
        return WineForest(mlflow.sklearn.load_model(path), mlmodel.signature.inputs.input_names())

    def preprocess(self, model, data):
        import pandas as pd

        frame = pd.DataFrame(read_split_frame(data), columns=read_json(data)["columns"])
        missing = [name for name in model.features if name not in frame.columns]
        if missing:
            raise InvalidInput(f"missing columns: {', '.join(missing)}")
        return frame

    def inference(self, model, batch):
        import pandas as pd

        marks = batch.reindex(columns=MARKS).fillna(0)
        time.sleep(float(marks["sleep"].max()))
        if marks["fail"].any():
            raise RuntimeError("a row of this batch is marked to fail")
        if marks["invalid"].any():
            raise InvalidInput("a row is marked invalid")
        return pd.DataFrame({"quality": model.forest.predict(batch[model.features].to_numpy(np.float32))})

    def request_content_type(self):
        return "application/json"
