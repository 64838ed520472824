"""The plugin API: how a model is loaded and how request bytes become predictions.

A plugin is a class with three methods::

    from mlflow_pluggable_scoring_server.plugin import BasePlugin

    class Plugin(BasePlugin):
        def load_model(self, model_uri):
            import mlflow.sklearn
            return mlflow.sklearn.load_model(model_uri)

        def predict(self, model, data):          # data: the request body (bytes)
            rows = json.loads(data)
            return model.predict(rows)           # or a JSON string, as in 2020

        def request_content_type(self):
            return "application/json"            # or a list: ["image/png", "image/jpeg"]

A plugin that can score many requests in one model call subclasses :class:`BatchPlugin`
instead: it splits ``predict`` into ``preprocess`` (one body to a model input) and
``inference`` (one model call on stacked inputs), and the server may then merge
concurrent requests (``max_batch_size``, see ``batching.py``).

A plugin is either a Python file (``--plugin-file plugin.py``) or an installed plugin
registered under the entry-point group ``mlflow_pluggable_scoring_server.plugins``
(``--plugin NAME``); the server ships ``pyfunc`` (the default) and ``image`` that way.

Nothing here knows about HTTP: the server matches media types, negotiates the
response type and encodes what ``predict`` returns (see ``media.py``).
"""

import hashlib
import importlib.util
import itertools
import os
import sys
from abc import ABCMeta, abstractmethod

from .errors import StartupError

DEFAULT_PLUGIN_CLASS = "plugin.Plugin"
DEFAULT_PLUGIN = "pyfunc"
ENTRY_POINT_GROUP = "mlflow_pluggable_scoring_server.plugins"
PLUGIN_METHODS = ("load_model", "predict", "request_content_type")


class Payload(bytes):
    """The request body as bytes, with the media type it was sent as.

    It *is* ``bytes`` (plugins written for the 2020 API keep working); new plugins
    can read ``data.media_type`` (e.g. ``"image/png"``, parameters stripped) and
    ``data.media_params`` (e.g. ``{"charset": "utf-8"}``).
    """

    media_type = None
    media_params = {}

    def __new__(cls, body, media_type=None, media_params=None):
        payload = super().__new__(cls, body)
        payload.media_type = media_type
        payload.media_params = dict(media_params or {})
        return payload


class BasePlugin(metaclass=ABCMeta):
    """Base class of every plugin. Subclass it and implement the three abstract methods."""

    @abstractmethod
    def load_model(self, model_uri):
        """Load the model once, at start-up.

        :param model_uri: an MLflow model URI (path, ``file:``, ``runs:/``, ``models:/``).
        :return: the model object handed to every ``predict`` call. Create heavy state
            (an ONNX session, a Spark session) here, never in ``predict``.
        """

    @abstractmethod
    def predict(self, model, data):
        """Score one request.

        :param model: what ``load_model`` returned.
        :param data: the request body, a :class:`Payload` (a ``bytes``).
        :return: a JSON string (2020 style), ``bytes`` sent as they are, or an object
            the server encodes in the negotiated media type: ``list``/``dict``/scalars,
            numpy arrays, pandas DataFrames or Series, PIL images (``image/png``).
            Raise :class:`~mlflow_pluggable_scoring_server.errors.InvalidInput` for input
            that cannot be scored; any other exception is answered with 500.
        """

    @abstractmethod
    def request_content_type(self):
        """The media type of the request body: a string, or a list of strings.

        Wildcards such as ``"image/*"`` are allowed; parameters are ignored.
        """

    def response_content_types(self):
        """The media types ``predict``'s result can be sent as, the default first."""
        return ["application/json", "text/csv"]

    def example_request(self, model):
        """Optional: a request body this plugin scores, as ``(bytes, media type)``, or None.

        The Swagger UI offers it as the predict body's example (JSON and text ones), and
        ``check-plugin`` sends it when no ``--sample`` is given.
        """
        return None

    def fork_safe(self, model_uri):
        """Optional: whether the model at ``model_uri`` may be loaded once, in the master process, and shared by the
        workers forked from it (their memory holds one copy of it).

        Only for a model whose loading starts no thread and opens no connection, file or device
        that the workers would then share: scikit-learn's, say. TensorFlow, ONNX Runtime and
        Spark are not. The server asks only for a local model (a path or ``file:`` URI), with the
        ``preload`` setting on. Default: False, each worker loads its own copy after the fork.
        """
        return False

    def __repr__(self):
        return f"{type(self).__name__}(request_content_type={self.request_content_type()!r})"


class BatchPlugin(BasePlugin):
    """A plugin whose model call can take several requests at once (vocabulary from TorchServe).

    Implement ``load_model``, ``request_content_type``, :meth:`preprocess` and :meth:`inference`;
    ``predict`` is then one request through all the steps, and with ``max_batch_size`` > 1 the
    server runs :meth:`preprocess` and :meth:`postprocess` per request and :meth:`run_batch` on
    many at once. The defaults of :meth:`stack` and :meth:`split` handle numpy arrays and pandas
    DataFrames whose rows are the samples. Class attributes ``max_batch_size`` and
    ``max_batch_time_ms`` are the plugin's defaults for those settings; conf and flags win.
    """

    max_batch_size = 1
    max_batch_time_ms = 2.0

    @abstractmethod
    def preprocess(self, model, data):
        """Decode one request body (a :class:`Payload`) into a model input: rows that :meth:`stack` can join.

        Raise :class:`~mlflow_pluggable_scoring_server.errors.InvalidInput` for a body that
        cannot be scored; it fails that request only.
        """

    @abstractmethod
    def inference(self, model, batch):
        """Run the model once on stacked inputs; returns one output row per input row."""

    def stack(self, inputs):
        """Join decoded inputs into one batch: DataFrames (or Series) end to end, arrays along axis 0."""
        if _is_pandas(inputs[0]):
            import pandas as pd

            return pd.concat(inputs, ignore_index=True)
        import numpy as np

        return np.concatenate(inputs)

    def split(self, outputs, sizes):
        """Cut the batch's outputs back into one output per input; ``sizes`` are the inputs' row counts."""
        if len(outputs) != sum(sizes):
            raise ValueError(f"inference returned {len(outputs)} rows for {sum(sizes)} input rows")
        ends = list(itertools.accumulate(sizes))
        if _is_pandas(outputs):
            return [outputs.iloc[end - size:end].reset_index(drop=True) for size, end in zip(sizes, ends)]
        return [outputs[end - size:end] for size, end in zip(sizes, ends)]

    def postprocess(self, model, output):
        """Turn one request's output into what ``predict`` returns (by default, the output itself)."""
        return output

    def run_batch(self, model, inputs):
        """Score decoded inputs in one model call: stack, inference, split. Returns one output per input."""
        return self.split(self.inference(model, self.stack(inputs)), [len(x) for x in inputs])

    def predict(self, model, data):
        """One request, unbatched: the steps above with a batch of one."""
        return self.postprocess(model, self.run_batch(model, [self.preprocess(model, data)])[0])


def _is_pandas(value):
    """A DataFrame or Series, told without importing pandas."""
    return type(value).__module__.partition(".")[0] == "pandas"


def is_batchable(plugin):
    """Whether requests to ``plugin`` can be merged into one model call."""
    return isinstance(plugin, BatchPlugin)


def request_media_types(plugin):
    """The plugin's accepted request media types, as a list of lower-case strings."""
    declared = plugin.request_content_type()
    types = [declared] if isinstance(declared, str) else list(declared)
    return [t.split(";", 1)[0].strip().lower() for t in types]


def response_media_types(plugin):
    """The plugin's response media types; 2020-style plugins have no such method."""
    method = getattr(plugin, "response_content_types", None)
    types = method() if callable(method) else BasePlugin.response_content_types(plugin)
    return [t.split(";", 1)[0].strip().lower() for t in types]


def is_plugin_file(spec):
    """Whether a ``plugin`` setting (a string or a path) names a Python file rather than an installed plugin."""
    spec = os.fspath(spec)
    return spec.endswith(".py") or "/" in spec or os.sep in spec or os.path.isfile(spec)


def installed_plugins():
    """The installed plugins: ``{name: entry point}`` of the group ``ENTRY_POINT_GROUP``."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin(spec, class_name=DEFAULT_PLUGIN_CLASS, options=None):
    """Load the plugin ``spec``: a Python file (with ``class_name`` in it) or an installed plugin's name.

    ``options`` (a mapping) are passed to the plugin class as keyword arguments.
    Raises :class:`StartupError` with a one-line reason.
    """
    from .compat import legacy_json_text

    legacy_json_text()  # before any plugin code runs
    if is_plugin_file(spec):
        return load_file_plugin(os.fspath(spec), class_name, options)
    plugins = installed_plugins()
    if spec not in plugins:
        raise StartupError(f"no installed plugin named '{spec}' (installed: {', '.join(sorted(plugins)) or 'none'});"
                           " give the path of a .py file for a plugin file")
    try:
        cls = plugins[spec].load()
    except Exception as e:
        raise StartupError(f"plugin '{spec}' ({plugins[spec].value}) failed to import: {type(e).__name__}: {e}") from e
    return instantiate(cls, plugins[spec].value, f"entry point '{spec}'", options)


def load_file_plugin(path, class_name=DEFAULT_PLUGIN_CLASS, options=None):
    """Import the plugin class ``class_name`` from the Python file ``path`` and instantiate it.

    ``class_name`` is ``module.Class`` as in 2020; only the part after the last dot
    names the class. The file's folder is put on ``sys.path`` so that a plugin can
    import its sibling modules. Raises :class:`StartupError` with a one-line reason.
    """
    if not os.path.isfile(path):
        raise StartupError(f"plugin file '{path}' does not exist")
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.append(folder)
    # A unique module name: several plugins all called plugin.py can live in one process.
    module_name = "_msss_plugin_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise StartupError(f"plugin file '{path}' failed to import: {type(e).__name__}: {e}") from e
    return instantiate(getattr(module, class_name.rsplit(".", 1)[-1], None), class_name, path, options)


def instantiate(cls, class_name, where, options=None):
    """Check that ``cls`` is a plugin class and create the plugin with ``options`` as keyword arguments."""
    if cls is None:
        raise StartupError(f"plugin class '{class_name}' not found in '{where}'")
    missing = [m for m in PLUGIN_METHODS if not callable(getattr(cls, m, None))]
    if not isinstance(cls, type) or missing:
        raise StartupError(
            f"'{class_name}' in '{where}' is not a plugin: it must be a class defining "
            + ", ".join(PLUGIN_METHODS)
            + (f" (missing: {', '.join(missing)})" if missing and isinstance(cls, type) else "")
        )
    try:
        plugin = cls(**(options or {}))
        request_media_types(plugin)
    except StartupError as e:  # the plugin's own one-line reason, e.g. a bad option
        raise StartupError(f"{cls.__name__}: {e}") from e
    except Exception as e:
        raise StartupError(f"plugin class '{class_name}' cannot be used: {type(e).__name__}: {e}") from e
    return plugin
