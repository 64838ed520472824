"""Prometheus metrics, summed over all gunicorn workers.

prometheus_client's multiprocess mode: every worker writes its samples to files in one
directory, and ``/metrics`` (answered by any worker) reads them all. The directory must
be named in PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported, so the master
calls :func:`prepare` before forking and :func:`worker_exit` when a worker is gone.
"""

import os
import shutil
import tempfile

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


_owned = None  # the samples directory this master made; its workers inherit the knowledge


def prepare():
    """Create the samples directory (unless the environment names one); returns it and whether we own it."""
    global _owned
    if os.environ.get(MULTIPROC_ENV):
        return os.environ[MULTIPROC_ENV], False
    folder = _owned = tempfile.mkdtemp(prefix="mlflow-pss-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder, True


def cleanup_orphaned():
    """In a worker whose master died: remove the samples directory the master made, as it would have."""
    cleanup(_owned, _owned is not None)


def worker_exit(pid):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def cleanup(folder, owned):
    if owned:
        shutil.rmtree(folder, ignore_errors=True)


class Metrics:
    """The server's metrics; labels are route templates, never raw paths, to bound their number.

    Under gunicorn (:func:`prepare` has named the samples directory) every worker's samples are
    summed; otherwise (an app built in-process, e.g. by the tests) each instance counts alone.
    """

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = None if os.environ.get(MULTIPROC_ENV) else CollectorRegistry()
        # "model": the model a scoring request went to ("" for the other endpoints).
        self.requests = Counter("scoring_requests_total", "HTTP requests answered.",
                                ["endpoint", "method", "status", "model"], registry=self.registry)
        self.latency = Histogram(
            "scoring_request_duration_seconds", "Time to answer an HTTP request.", ["endpoint", "method", "model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.prediction_errors = Counter("scoring_prediction_errors_total", "Predictions answered with an error.",
                                         ["error_code", "model"], registry=self.registry)
        self.batch_size = Histogram("scoring_batch_size", "Requests merged into one model call.", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        # 1 for the version each model is served at (by any live worker: during a rollout, both).
        self.model_info = Gauge("scoring_model_info", "The model versions served.", ["model", "version"],
                                multiprocess_mode="livemax", registry=self.registry)
        self.rollout_failures = Counter("scoring_rollout_failures_total", "New registry versions not switched to.",
                                        ["model"], registry=self.registry)

    def observe(self, endpoint, method, status, seconds, model=""):
        self.requests.labels(endpoint, method, str(status), model).inc()
        self.latency.labels(endpoint, method, model).observe(seconds)

    def serving(self, model, version, previous=None):
        """Say that ``model`` is served at ``version`` (None: no registry version), and no longer at ``previous``."""
        if previous is not None and previous != version:
            self.model_info.labels(model, str(previous)).set(0)
        self.model_info.labels(model, str(version or "")).set(1)

    def render(self):
        """The text exposition of every worker's samples, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        registry = self.registry
        if registry is None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
