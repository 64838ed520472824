"""The ``image`` plugin: an image model served with no code.

A PNG or JPEG body is decoded with :func:`~mlflow_pluggable_scoring_server.decoders.read_image`
(Pillow's pixel limit and the 400 answers included), converted to a colour mode, resized,
scaled to ``[0, 1]`` and given a batch axis; the array goes to the model's
``mlflow.pyfunc`` ``predict`` (a Keras model's ``predict_on_batch``: the same answers, without
``predict``'s 66 ms per call). When the model's signature has one tensor input, its shape and
dtype are used: the array is reshaped to it (``(-1, 28, 28)``, ``(-1, 28, 28, 1)`` or a flat
``(-1, 784)`` alike) and the size is taken from it unless given (a flat input: a square image).
It can batch (``--max-batch-size``)::

    mlflow-pluggable-scoring-server --plugin image --model-uri plugin_samples/keras_mnist/model
    mlflow-pluggable-scoring-server --plugin image --plugin-option size=224x224 \\
        --plugin-option mode=RGB --model-uri models:/resnet/1
"""

import math
import re
import sys
from typing import NamedTuple

import numpy as np

from ..decoders import IMAGE_TYPES, read_image
from ..errors import StartupError
from ..models import load_pyfunc
from ..plugin import BatchPlugin

MODES = {"L": 1, "RGB": 3, "RGBA": 4}  # Pillow mode: channels
LAYOUTS = ("channels_last", "channels_first")


class ImageModel(NamedTuple):
    predict: object  # a batch of arrays -> the model's outputs
    size: tuple  # (width, height) images are resized to
    shape: tuple  # the model's input shape, batch axis first, or None to send (1, H, W[, C])
    dtype: object  # numpy dtype of the model's input


class ImagePlugin(BatchPlugin):
    """Options (``--plugin-option KEY=VALUE`` or ``plugin_options`` in the conf):

    - ``size``: ``WxH`` or ``[W, H]``; by default the model signature's.
    - ``mode``: ``L`` (grey levels, the default), ``RGB`` or ``RGBA``.
    - ``scale``: pixel values are divided by it (default 255: values in ``[0, 1]``).
    - ``layout``: ``channels_last`` (default, Keras) or ``channels_first`` (PyTorch).
    """

    def __init__(self, size=None, mode="L", scale=255.0, layout="channels_last"):
        self.size = None if size is None else parse_size(size)
        if mode not in MODES:
            raise StartupError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise StartupError(f"scale must be a positive number, not {scale!r}")
        if layout not in LAYOUTS:
            raise StartupError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.mode, self.scale, self.layout = mode, float(scale), layout

    def load_model(self, model_uri):
        import mlflow.pyfunc

        pyfunc = load_pyfunc(model_uri, mlflow.pyfunc.load_model)
        if "keras" in sys.modules:  # Keras' predict, if called, would print a progress bar into the log per request
            sys.modules["keras"].config.disable_interactive_logging()
        schema = pyfunc.metadata.get_input_schema()
        spec = schema.inputs[0] if schema is not None and schema.is_tensor_spec() and len(schema.inputs) == 1 else None
        # A shape with variable image dimensions (-1) gives neither a size nor a reshape.
        shape = tuple(spec.shape) if spec is not None and min(spec.shape[1:], default=0) > 0 else None
        size = self.size or (shape and self._size_of(shape))
        if not size:
            raise ValueError("the model's signature has no image input shape: give the size option (e.g. size=28x28)")
        if shape and int(np.prod(shape[1:])) != size[0] * size[1] * MODES[self.mode]:
            raise ValueError(f"{size[0]}x{size[1]} {self.mode} images do not fit the model's input shape {shape}")
        return ImageModel(model_call(pyfunc), size, shape, spec.type if spec is not None else np.dtype("float32"))

    def preprocess(self, model, data):
        image = read_image(data, mode=self.mode, size=model.size)
        x = np.asarray(image, dtype=np.float32) / self.scale
        if x.ndim == 3 and self.layout == "channels_first":
            x = x.transpose(2, 0, 1)
        x = x[np.newaxis].astype(model.dtype, copy=False)
        if model.shape:
            x = x.reshape((1, *model.shape[1:]))
        return x

    def inference(self, model, batch):
        return model.predict(batch)

    def request_content_type(self):
        return [*IMAGE_TYPES, "application/octet-stream"]

    def _size_of(self, shape):
        """``(width, height)`` from an input shape: ``(-1, H, W)``, with channels on the layout's side,
        or a flat ``(-1, N)`` holding a square image (MNIST's 784 values: 28x28 L)."""
        dims = shape[1:]
        if len(dims) == 1:
            side = math.isqrt(dims[0] // MODES[self.mode])
            return (side, side) if side * side * MODES[self.mode] == dims[0] else None
        if len(dims) == 3:
            dims = dims[1:] if self.layout == "channels_first" else dims[:2]
        if len(dims) != 2:
            return None
        height, width = dims
        return width, height


def model_call(pyfunc):
    """The model's ``predict``: pyfunc's, but a Keras model's ``predict_on_batch`` when pyfunc would call its ``predict``.

    Keras' ``predict`` builds a dataset and a progress bar per call: about 66 ms for one 28x28
    image on 2 cores, where ``predict_on_batch`` runs the same compiled step in 0.7 ms.
    """
    keras = sys.modules.get("keras")  # imported by the model's flavor, if it is a Keras model
    try:
        raw = pyfunc.get_raw_model() if keras else None
    except NotImplementedError:
        raw = None
    if keras is None or not isinstance(raw, keras.Model):  # an exported model is a TFSMLayer: pyfunc calls serve()
        return pyfunc.predict
    return lambda batch: keras.ops.convert_to_numpy(raw.predict_on_batch(batch))


def parse_size(size):
    """``(width, height)`` from ``"28x28"`` or ``[28, 28]``; StartupError otherwise."""
    if isinstance(size, str) and re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", size):
        size = [int(n) for n in re.split("[xX]", size)]
    if (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)):
        return tuple(size)
    raise StartupError(f"size must be WxH or [W, H] in pixels (e.g. 28x28), not {size!r}")
