"""Following the Model Registry: a model served by alias, stage or ``latest`` moves to the version it points at.

Every ``registry_poll_seconds`` each worker looks up the version each such URI points at. When
it is another one, the worker loads that version beside the one it serves (and scores the
plugin's example request once, when it has one), then makes it the model's scorer in one
assignment, then lets the old one go: a request holds the scorer it started with, so none fails
or waits on the switch. A version that cannot be loaded or scored is not switched to: the old
one goes on, and the failure is logged, counted (``scoring_rollout_failures_total``) and shown in
``/api/status`` until a version loads.
"""

import logging
import re
import threading
import time
from urllib.parse import urlparse

from .models import model_version, pinned_uri

logger = logging.getLogger(__name__)

PINNED = re.compile(r"^[0-9]+$")  # models:/name/3 names one version for good


def follows_registry(model_uri):
    """Whether ``model_uri`` names a registered model by alias, stage or ``latest``: a version that can move."""
    parsed = urlparse(model_uri)
    if parsed.scheme != "models":
        return False
    path = (parsed.netloc + parsed.path).strip("/")
    return "@" in path or not PINNED.match(path.partition("/")[2])


def start_polling(repository, seconds, metrics):
    """Poll the registry every ``seconds`` for the models that follow it, in a thread of this worker."""
    models = [model for model in repository if follows_registry(model.uri)]
    if not seconds or not models:
        return None
    thread = threading.Thread(target=_poll, args=(models, seconds, metrics), name="registry-poller", daemon=True)
    thread.start()
    logger.info("following the registry every %g s for %s", seconds, ", ".join(m.uri for m in models))
    return thread


def _poll(models, seconds, metrics):
    while True:
        time.sleep(seconds)
        for model in models:
            try:
                roll_out(model, metrics)
            except Exception:  # the poller must outlive anything: the next period tries again
                logger.exception("polling the registry for %s failed", model.uri)


def roll_out(model, metrics):
    """Switch ``model`` (a :class:`~.repository.ServedModel`) to the version its URI points at now, if another.

    Returns the version switched to, or None.
    """
    if not model.ready:
        return None
    try:
        version = model_version(model.uri)
    except Exception as e:
        logger.warning("the registry cannot say which version %s is now: %s", model.uri, e)
        return None
    current = model.scorer
    if version is None or version == current.version or version == model.failed_version:
        return None
    logger.info("model %s: loading version %s (%s) beside version %s", model.name, version, model.uri, current.version)
    scorer = model.make_scorer()
    try:
        scorer.load(pinned_uri(model.uri, version), version)
        example = scorer.example()
        if example is not None:  # a version that cannot score its own example is not served
            scorer.score(example[0], example[1], None)
    except Exception as e:
        scorer.close()
        reason = (str(getattr(e, "message", None) or e).strip().splitlines() or [""])[0]
        model.failed_version = version
        model.rollout_error = f"version {version} was not switched to: {type(e).__name__}: {reason}"
        logger.error("model %s: %s; still serving version %s", model.name, model.rollout_error, current.version)
        if metrics:
            metrics.rollout_failures.labels(model.name).inc()
        return None
    model.scorer = scorer  # one assignment: requests from now on score with the new version
    model.failed_version = model.rollout_error = model.metadata = None  # the metadata held the old scorer
    if metrics:
        metrics.serving(model.name, version, current.version)
    current.close()  # its requests in flight finish with it
    logger.info("model %s: now serving version %s (was %s)", model.name, version, current.version)
    return version
