"""Model URIs: check that one resolves before any worker tries to load it.

The plugin loads the model (``load_model(model_uri)``); this only makes a URI that
points nowhere fail at start-up with one line instead of a worker traceback.
"""

import json
import os
from typing import NamedTuple
from urllib.parse import urlparse

from .errors import StartupError


def local_path(model_uri):
    """The filesystem path of a plain path or ``file:`` URI, else None."""
    parsed = urlparse(model_uri)
    if parsed.scheme == "file":
        return parsed.netloc + parsed.path if parsed.netloc not in ("", "localhost") else parsed.path
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return model_uri
    return None


DEFAULT_MODEL_NAME = "mlflow-model"  # MLflow's name for a model served over V2 (`mlflow models serve --enable-mlserver`)


def model_name(model_uri):
    """The name a model is served under: the registered model's for a ``models:/`` URI, else DEFAULT_MODEL_NAME."""
    parsed = urlparse(model_uri)
    if parsed.scheme == "models":
        name = (parsed.netloc + parsed.path).lstrip("/").split("/")[0].split("@")[0]
        if name:
            return name
    return DEFAULT_MODEL_NAME


def model_version(model_uri):
    """The registry version a ``models:/`` URI points at now (its alias, stage or ``latest`` resolved), else None."""
    if urlparse(model_uri).scheme != "models":
        return None
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    return str(get_model_name_and_version(MlflowClient(), model_uri)[1])


def pinned_uri(model_uri, version):
    """The ``models:/name/version`` URI of one version of the model of a ``models:/`` URI."""
    return f"models:/{model_name(model_uri)}/{version}"


def check_model_uri(model_uri):
    """Raise StartupError if ``model_uri`` does not resolve to a model.

    Paths must exist; ``models:/`` must name a registered version, stage, alias or
    ``latest`` in the registry of MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI; ``runs:/``
    must name an existing run. Other schemes (s3:, gs:, ...) are left to the plugin.
    """
    path = local_path(model_uri)
    if path is not None:
        if not os.path.exists(path):
            raise StartupError(f"model URI '{model_uri}' does not resolve: no such file or directory '{path}'")
        return
    scheme = urlparse(model_uri).scheme
    if scheme in ("models", "runs"):
        # In a child process: a registry's database connection (sqlite, a pool) opened here would be
        # inherited by every worker forked later, and shared by them it gives stale or no answers.
        in_child(_check_registered, model_uri, scheme)


def in_child(task, *args, ended="the check ended its process"):
    """``task(*args)`` run in a forked child process: what it returns (JSON-able), or the :class:`StartupError`
    it raises, raised here in one line; ``ended``: the error when the child ends without a word."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any exit handler of the parent's
        os.close(read_end)
        try:
            report = {"result": task(*args)}
        except StartupError as e:
            report = {"error": str(e)}
        except BaseException as e:  # noqa: BLE001 -- whatever it is, the parent says it in one line
            report = {"error": f"{type(e).__name__}: {e}"}
        with os.fdopen(write_end, "w") as out:
            json.dump(report, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    report = json.loads(text) if text else {"error": ended}
    if "error" in report:
        raise StartupError((report["error"].splitlines() or [ended])[0])
    return report["result"]


def _check_registered(model_uri, scheme):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient()
        if scheme == "models":
            from mlflow.store.artifact.utils.models import get_model_name_and_version

            name_and_version = get_model_name_and_version(client, model_uri)
            if len(name_and_version) == 2:  # a version number is parsed, not looked up
                client.get_model_version(*name_and_version)
        else:
            from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

            run_id, _ = RunsArtifactRepository.parse_runs_uri(model_uri)
            client.get_run(run_id)
    except MlflowException as e:
        reason = str(e.message).strip().splitlines()[0]
        raise StartupError(f"model URI '{model_uri}' does not resolve: {reason}") from None


def model_folder(model_uri):
    """The local folder of a model's files: a path or ``file:`` URI in place, else downloaded once.

    Only a download imports MLflow (some 150 MB and seconds per worker).
    """
    path = local_path(model_uri)
    if path is not None:
        return path
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(model_uri)


def fetch_model(model_uri):
    """Fetch a model's files once and read its MLmodel: returns ``(local path, mlflow.models.Model)``.

    For plugins: a local path or ``file:`` URI is used in place; a registry or run URI
    is downloaded once, so that the flavor loader and the signature read the same copy.
    """
    from mlflow.models import Model

    path = model_folder(model_uri)
    return path, Model.load(path)


class LocalModel(NamedTuple):
    """A model's folder and what its MLmodel file says, read without importing MLflow."""

    path: str
    flavors: dict  # flavor name -> its settings, as in MLmodel
    signature: dict  # "inputs", "outputs", "params": MLflow's JSON specs, decoded; {} without a signature

    def input_names(self):
        """The names of the signature's input columns, in order (empty for a tensor signature)."""
        return [spec["name"] for spec in self.signature.get("inputs") or [] if "name" in spec]

    def serving_example(self):
        """See :func:`serving_example`."""
        return serving_example(self.path)

    def flavor_file(self, flavor):
        """The path of a flavor's model file (its ``data``), e.g. ``model.onnx`` for ``onnx``."""
        return os.path.join(self.path, self.flavors[flavor]["data"])


def serving_example(path):
    """The request body MLflow saved with the model in folder ``path`` (``serving_input_example.json``, written
    when the model is saved with an ``input_example``), as bytes, or None: a plugin's ``example_request``."""
    try:
        with open(os.path.join(path, "serving_input_example.json"), "rb") as f:
            return f.read()
    except OSError:
        return None


def read_model(model_uri):
    """The :class:`LocalModel` of ``model_uri``, for plugins that load a model file themselves
    (an ONNX session, say): a local model's worker then never imports MLflow."""
    import yaml

    path = model_folder(model_uri)
    with open(os.path.join(path, "MLmodel")) as f:
        doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    signature = {key: json.loads(spec) for key, spec in (doc.get("signature") or {}).items() if spec}
    return LocalModel(path, doc.get("flavors") or {}, signature)


def load_pyfunc(model_uri, load):
    """The model's ``mlflow.pyfunc`` model: ``load`` (MLflow's loader) on its local folder, but a Keras
    model logged by MLflow 1.x's ``mlflow.keras`` (``data/model.h5``) through ``mlflow.tensorflow``.

    Such a model names ``mlflow.keras`` as its loader, which in MLflow 3 reads only Keras 3's
    ``data/model.keras``; ``mlflow.tensorflow`` still reads the old layout (MLflow 2.x logged Keras
    models with it), and Keras 3 the H5 file. An old SavedModel (``save_format: tf``) gets Keras 3's
    one-line refusal, which names ``keras.layers.TFSMLayer``.
    """
    path = model_folder(os.fspath(model_uri))  # MLflow's loaders take a pathlib.Path too
    has_mlmodel = os.path.isfile(os.path.join(path, "MLmodel"))  # else MLflow's loader says what is missing
    keras = (read_model(path).flavors.get("keras") if has_mlmodel else None) or {}
    if "keras_module" not in keras:  # MLflow 3's Keras flavor does not write it; the old one always did
        return load(path)
    import mlflow.tensorflow
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel

    # As mlflow.pyfunc.load_model does, with the loader that reads the old layout.
    model = mlflow.tensorflow._load_pyfunc(os.path.join(path, keras.get("data", "data")))
    return PyFuncModel(model_meta=Model.load(path), model_impl=model)
