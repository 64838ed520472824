"""The models a worker serves, by name: each a plugin and the :class:`~.scoring.Scorer` of its loaded model.

A model's scorer is replaced whole when the registry moves its alias (see :mod:`.rollout`):
a request takes the model's scorer once and keeps it to the end, so a swap never fails or
delays a request in flight.
"""

import json
import logging
import os
import threading
import time
from http import HTTPStatus

from .errors import ScoringError
from .locks import exclusive_lock
from .models import model_version, pinned_uri

logger = logging.getLogger(__name__)


class UnknownModel(ScoringError):
    status_code = HTTPStatus.NOT_FOUND


class ServedModel:
    """One named model: its settings (a :class:`~.config.ModelSettings`), plugin and current scorer."""

    def __init__(self, settings, plugin, make_scorer):
        self.settings = settings
        self.name = settings.name
        self.plugin = plugin
        self.make_scorer = make_scorer  # a new Scorer of the plugin, its model not loaded
        self.scorer = make_scorer()  # replaced whole by a rollout
        self.rollout_error = None  # why the last new version was not switched to, or None
        self.failed_version = None  # that version, not tried again until the registry moves on
        self.metadata = None  # its V2 metadata, once asked for (see v2_endpoints)
        self.unloaded = False  # by V2's repository extension

    def load(self, metrics=None, load=None):
        """Load the model into the current scorer (which must not be loaded yet): for a URI that follows the
        registry, the version it points at now, looked up first (the alias may move while it loads). ``load``:
        what loads it from its URI, by default the plugin's ``load_model``."""
        from .rollout import follows_registry

        version = model_version(self.uri) if follows_registry(self.uri) else None
        self.scorer.load(pinned_uri(self.uri, version) if version else self.uri, version, load)
        self.unloaded = False
        if metrics:
            metrics.serving(self.name, self.scorer.version)

    def unload(self, metrics=None):
        """Let the model go (V2's repository extension): its requests get 503 until it is loaded again."""
        old, self.scorer = self.scorer, self.make_scorer()
        self.unloaded = True
        self.metadata = None  # it holds the old scorer, and so its model
        old.close()
        if metrics:  # no longer served here
            metrics.model_info.labels(self.name, str(old.version or "")).set(0)

    @property
    def uri(self):
        return self.settings.model_uri

    @property
    def ready(self):
        return self.scorer.ready.is_set()

    def status(self):
        scorer = self.scorer
        return {
            "name": self.name,
            "uri": self.uri,
            "version": scorer.version,
            "plugin": {"file": self.settings.plugin, "class": self.settings.plugin_class},
            "state": "unloaded" if self.unloaded else "ready" if scorer.ready.is_set() else "loading",
            "request_content_types": scorer.request_types,
            "response_content_types": scorer.response_types,
            **({"rollout_error": self.rollout_error} if self.rollout_error else {}),
        }


class Repository:
    """The served models, in their configured order: the first answers the routes that name none."""

    def __init__(self, models, state_file=None):
        self.models = {model.name: model for model in models}
        self.default = models[0]
        self.lock = threading.Lock()  # load and unload
        self.state_file = StateFile(state_file) if state_file else None  # shared by the workers
        self.metrics = None

    def __iter__(self):
        return iter(list(self.models.values()))

    def get(self, name):
        """The model named ``name``; 404 when there is none (the name is not quoted back)."""
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"no such model here; served: {', '.join(self.models)}")
        return model

    @property
    def ready(self):
        """Every model is loaded but those unloaded on purpose (the worker takes connections, probes answer 200)."""
        return all(model.ready for model in self.models.values() if not model.unloaded)

    def wait_ready(self, timeout):
        for model in list(self.models.values()):
            if not model.unloaded and not model.scorer.ready.wait(timeout):
                return False
        return True

    def index(self):
        """V2's repository index: each model with its version and state."""
        return [{"name": m.name, **({"version": m.scorer.version} if m.scorer.version else {}),
                 "state": "UNAVAILABLE" if m.unloaded else "READY" if m.ready else "LOADING",
                 **({"reason": "unloaded"} if m.unloaded else {})} for m in self]

    def set_state(self, name, loaded, metrics=None):
        """Load or unload the model ``name`` here and, through the shared state file, in every other worker."""
        model = self.get(name)
        with self.lock:
            if self.state_file:
                self.state_file.write(name, loaded)
            self._apply(model, loaded, metrics)

    def _apply(self, model, loaded, metrics):
        if loaded and model.unloaded:
            logger.info("model %s: loading (repository extension)", model.name)
            try:
                model.load(metrics)
            except Exception as e:
                logger.exception("model %s cannot be loaded", model.name)
                reason = (str(e).strip().splitlines() or [""])[0]
                raise ScoringError(f"model {model.name!r} cannot be loaded: {type(e).__name__}: {reason}") from e
        elif not loaded and not model.unloaded:
            logger.info("model %s: unloaded (repository extension)", model.name)
            model.unload(metrics)

    def follow_state_file(self, metrics, seconds=0.5):
        """In each worker: apply the loads and unloads that another worker answered (a thread of its own)."""
        def follow():
            seen = None
            while True:
                time.sleep(seconds)
                try:
                    stamp, wanted = self.state_file.read()
                    if stamp == seen:
                        continue
                    seen = stamp
                    with self.lock:
                        for name, loaded in wanted.items():
                            if name in self.models:
                                self._apply(self.models[name], loaded, metrics)
                except Exception:  # a model that fails to load again stays unloaded; the thread goes on
                    logger.exception("applying the repository's state failed")

        if self.state_file:
            threading.Thread(target=follow, name="repository-state", daemon=True).start()


class StateFile:
    """The models' wanted states (loaded or not), shared by a server's workers in a JSON file."""

    def __init__(self, path):
        self.path = path

    def read(self):
        try:
            with open(self.path) as f:
                return os.fstat(f.fileno()).st_mtime_ns, json.load(f)
        except FileNotFoundError:
            return None, {}

    def write(self, name, loaded):
        with exclusive_lock(f"{self.path}.lock"):  # two workers answering at once: neither change is lost
            _, wanted = self.read()
            wanted[name] = loaded
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(wanted, f)
            os.replace(tmp, self.path)  # a reader sees the old file or the new one
