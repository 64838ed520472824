"""The Keras digit sample as a plugin written the obvious way: Keras' ``predict()`` per model call.

Only for bench/run.py's ``digits-predict`` case. ``predict()`` builds a dataset per call (about
66 ms here, whatever the batch size), where the sample's ``predict_on_batch`` costs 0.7 ms: a
model call with a large fixed cost, which is what adaptive batching is for.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "keras_mnist_sample", Path(__file__).resolve().parent.parent / "plugin_samples" / "keras_mnist" / "plugin.py")
_sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sample)


class Plugin(_sample.Plugin):
    def inference(self, model, batch):
        return model.predict(batch, verbose=0)
