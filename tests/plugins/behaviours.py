"""Plugins that misbehave on purpose, each around the real wine model."""

import numpy as np

from mlflow_pluggable_scoring_server.decoders import read_split_frame
from mlflow_pluggable_scoring_server.plugin import BasePlugin

FEATURES = 11


class WinePlugin(BasePlugin):
    def load_model(self, model_uri):
        import mlflow.sklearn

        return mlflow.sklearn.load_model(model_uri)

    def predict(self, model, data):
        return model.predict(read_split_frame(data)[:, :FEATURES])

    def request_content_type(self):
        return "application/json"


class Raising(WinePlugin):
    """Fails with a message that quotes the input: the caller must never see it."""

    def predict(self, model, data):
        raise RuntimeError(f"model exploded on {data.decode()}")


class ReturnsNone(WinePlugin):
    def predict(self, model, data):
        return None


class Unencodable(WinePlugin):
    def predict(self, model, data):
        return {"prediction": object()}


class ImageOut(WinePlugin):
    """Answers with a picture of its predictions (a 1-row grey-level image), or JSON."""

    def predict(self, model, data):
        from PIL import Image

        levels = np.clip(super().predict(model, data) * 25, 0, 255).astype("uint8")
        return Image.fromarray(levels.reshape(1, -1), mode="L")

    def response_content_types(self):
        return ["image/png", "application/json"]


class BadLoad(WinePlugin):
    def load_model(self, model_uri):
        raise ValueError("this plugin cannot read that model")


class Slow(WinePlugin):
    """Sleeps for the body's "sleep" seconds (a key beside "columns" and "data"), then predicts."""

    def predict(self, model, data):
        import json
        import time

        time.sleep(json.loads(data).get("sleep", 0))
        return super().predict(model, data)


class Spinning(WinePlugin):
    """Burns CPU in Python for ever (only the request timeout stops it), but for a body with a "sleep" key."""

    def predict(self, model, data):
        while b'"sleep"' not in data:
            pass
        return super().predict(model, data)


class SlowLoad(WinePlugin):
    """Takes a few seconds to load its model, like a big one."""

    def load_model(self, model_uri):
        import time

        time.sleep(4)
        return super().load_model(model_uri)


class RawPillow(WinePlugin):
    """A 2020-style image plugin: Pillow directly, no helpers, no checks."""

    def predict(self, model, data):
        import io

        from PIL import Image

        return list(Image.open(io.BytesIO(data)).convert("L").getdata())[:3]

    def request_content_type(self):
        return "image/png"


IMPORTED_IN = __import__("os").getpid()  # import-time state: it must be the worker's own


class ImportPid(WinePlugin):
    """Answers the pid of the process that imported this module and of the one scoring."""

    def predict(self, model, data):
        import os

        return {"imported_in": IMPORTED_IN, "pid": os.getpid()}


class StaggeredLoad(WinePlugin):
    """The first worker to load its model does so at once; the others (and replacements) take 3 s.

    ``marker``: a file that the first one creates.
    """

    def __init__(self, marker):
        self.marker = marker

    def load_model(self, model_uri):
        import os
        import time

        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            time.sleep(3)
        return super().load_model(model_uri)


class LoadPid(WinePlugin):
    """Says it is fork-safe; answers the pid of the process that loaded the model and of the one scoring."""

    def fork_safe(self, model_uri):
        return True

    def load_model(self, model_uri):
        import os

        return os.getpid()

    def predict(self, model, data):
        import os

        return {"loaded_in": model, "pid": os.getpid()}
