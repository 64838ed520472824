"""The models a worker serves, by name: each a plugin and the :class:`~.scoring.Scorer` of its loaded model.

A model's scorer is replaced whole when the registry moves its alias (see :mod:`.rollout`):
a request takes the model's scorer once and keeps it to the end, so a swap never fails or
delays a request in flight.
"""

import logging
import threading
from http import HTTPStatus

from .errors import ScoringError

logger = logging.getLogger(__name__)


class UnknownModel(ScoringError):
    status_code = HTTPStatus.NOT_FOUND


class ServedModel:
    """One named model: its settings (a :class:`~.config.ModelSettings`), plugin and current scorer."""

    def __init__(self, settings, plugin, scorer):
        self.settings = settings
        self.name = settings.name
        self.plugin = plugin
        self.scorer = scorer  # replaced whole by a rollout
        self.rollout_error = None  # why the last new version was not switched to, or None
        self.metadata = None  # its V2 metadata, once asked for (see v2_endpoints)

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
            "state": "ready" if scorer.ready.is_set() else "loading",
            "request_content_types": scorer.request_types,
            "response_content_types": scorer.response_types,
            **({"rollout_error": self.rollout_error} if self.rollout_error else {}),
        }


class Repository:
    """The served models, in their configured order: the first answers the routes that name none."""

    def __init__(self, models):
        self.models = {model.name: model for model in models}
        self.default = models[0]
        self.lock = threading.Lock()  # load and unload

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
        """Every model is loaded (the worker takes connections, readiness probes answer 200)."""
        return all(model.ready for model in self.models.values())

    def wait_ready(self, timeout):
        for model in list(self.models.values()):
            if not model.scorer.ready.wait(timeout):
                return False
        return True
