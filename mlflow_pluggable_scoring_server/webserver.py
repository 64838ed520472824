"""Command line: read the settings, check the plugin and model URI, serve with gunicorn.

    python -m mlflow_pluggable_scoring_server.webserver --conf plugin_samples/sklearn_wine/conf.yaml
    python -m mlflow_pluggable_scoring_server.webserver --plugin-file P --model-uri URI [--port 5005]

The master checks the plugin in a child process and never imports it: each gunicorn
worker imports the plugin and loads its own model after the fork (TensorFlow, ONNX
Runtime and Spark are not fork-safe, and a plugin's import-time state is the worker's).
"""

import argparse
import functools
import logging
import logging.config
import math
import os
import sys
import threading

from . import __version__
from .batching import batch_settings
from .config import add_setting_flags, build_settings
from .envs import prepare_environment
from .errors import StartupError
from .models import check_model_uri, in_child
from .plugin import load_plugin
from .rollout import start_polling

logger = logging.getLogger("mlflow_pluggable_scoring_server")

WORKER_BOOT_ERROR = 3  # gunicorn halts the whole server when a worker exits with this
READER_THREADS = 32  # per worker: requests read at once


def argument_parser():
    """``serve``'s command line: a flag for every setting (see config.py)."""
    p = argparse.ArgumentParser(
        prog="mlflow-pluggable-scoring-server",
        description="Serve an MLflow model through a plugin. Flags override environment variables (MLFLOW_PSS_<KEY>),"
                    " which override the conf file.",
        epilog="Other commands: `mlflow-pluggable-scoring-server commands` lists them.",
        allow_abbrev=False,  # else `--auth-token SECRET` would be taken for --auth-token-file
    )
    add_setting_flags(p)
    p.add_argument("--print-settings", action="store_true",
                   help="Print the settings the conf file, environment and flags make, as a conf file, and exit.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def parse_args(argv=None):
    return argument_parser().parse_args(argv)


def args_settings(args):
    """The settings that :func:`parse_args`'s ``args`` make with the conf file and the environment."""
    args = {k: v for k, v in vars(args).items() if k != "print_settings"}
    return build_settings(args.pop("conf"), **args)


def logging_config(settings):
    """One dictConfig for our loggers and gunicorn's, from the conf's ``logging`` section."""
    debug = settings.log_level == "DEBUG"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": settings.log_format}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}},
        "root": {"level": settings.log_level, "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": settings.log_level, "handlers": [], "propagate": True},
            # A line per request only when debugging: it costs throughput.
            "gunicorn.access": {"level": "DEBUG" if debug else "WARNING", "handlers": [], "propagate": True},
        },
    }


def make_server(settings, token):
    """A gunicorn application serving ``settings``' plugin and model; each worker loads both."""
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter
    from gunicorn.errors import HaltServer

    from . import metrics

    metrics_dir = metrics.prepare()  # before any worker forks

    class HaltingArbiter(Arbiter):
        """gunicorn's arbiter, but when every worker fails to boot (a model none can load), the second one's exit,
        reaped while the first one's halts the server, does not end the master with a traceback mid-halt."""

        halting = False

        def halt(self, reason=None, exit_status=0):
            self.halting = True
            super().halt(reason, exit_status)

        def reap_workers(self):
            try:
                super().reap_workers()
            except HaltServer:
                if not self.halting:
                    raise

    class Server(BaseApplication):
        def run(self):  # BaseApplication.run with the arbiter above
            try:
                HaltingArbiter(self).run()
            except RuntimeError as e:  # gunicorn's word for a setting it cannot use
                sys.exit(f"error: {e}")

        def load_config(self):
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("worker_class", "mlflow_pluggable_scoring_server.workers.ScoringWorker")
            # Threads read requests (slow clients hold one each until read_timeout) and encode answers;
            # predictions run in the model's own thread. Batching wants twice a batch: the next batch
            # is decoded while the model scores this one.
            self.cfg.set("threads", max(READER_THREADS, *(2 * (m.max_batch_size or 1) for m in settings.served_models())))
            self.cfg.set("graceful_timeout", math.ceil(settings.graceful_timeout))
            # gunicorn kills a worker silent this long; the request timeout (504) must come first.
            self.cfg.set("timeout", math.ceil(settings.request_timeout) + 30)
            self.cfg.set("loglevel", settings.log_level.lower())
            self.cfg.set("logconfig_dict", logging_config(settings))
            self.cfg.set("logger_class", "mlflow_pluggable_scoring_server.workers.QuietAccessLogger")
            self.cfg.set("proc_name", "mlflow-pluggable-scoring-server")
            # One control socket per user would collide between servers on one machine.
            self.cfg.set("control_socket_disable", True)
            self.cfg.set("child_exit", lambda arbiter, worker: metrics.worker_exit(worker.pid))
            self.cfg.set("on_exit", lambda arbiter: metrics.cleanup(*metrics_dir))

        def load(self):
            return load_app(settings, token)

    return Server()


def load_app(settings, token):
    """Build the WSGI app in this (worker) process with the plugins imported here, and load the models beside it.

    The app answers at once in-process; the worker takes connections only once every model is
    loaded. A plugin or a model that cannot be loaded stops the server, naming the model.
    """
    plugins = []
    for model in settings.served_models():
        try:
            plugins.append(load_plugin(model.plugin, model.plugin_class, model.plugin_options))
        except StartupError as e:
            stop_worker(f"error: {model_label(settings, model)}{e}")
    app, repository = build_app(settings, plugins, token)
    threading.Thread(target=load_models, args=(repository, settings), name="load-models", daemon=True).start()
    return app


def build_app(settings, plugins, token):
    """The WSGI app serving each of ``settings.served_models()`` with its plugin (in ``plugins``, in that order),
    and its :class:`~.repository.Repository`, whose models are not loaded yet."""
    from .app import create_app
    from .decoders import limit_image_pixels
    from . import metrics as metrics_module
    from .metrics import Metrics
    from .repository import Repository, ServedModel
    from .scoring import Scorer

    limit_image_pixels(settings.max_image_pixels)
    metrics = Metrics()
    served = []
    for model, plugin in zip(settings.served_models(), plugins):
        make_scorer = functools.partial(Scorer, plugin, timeout=settings.request_timeout,
                                        max_batch_size=model.max_batch_size or 1,
                                        max_batch_time_ms=model.max_batch_time_ms or 0,
                                        on_batch=metrics.batch_size.labels(model.name).observe)
        served.append(ServedModel(model, plugin, make_scorer))
    # The workers share the repository extension's loads and unloads through a file beside their metrics.
    samples = os.environ.get(metrics_module.MULTIPROC_ENV)
    repository = Repository(served, os.path.join(samples, "repository.json") if settings.model_repository and samples else None)
    repository.metrics = metrics
    return create_app(repository, settings, metrics=metrics, token=token), repository


def model_label(settings, model):
    """How a start-up error names a model: by name when there are several."""
    return f"model '{model.name}': " if settings.models else ""


def load_models(repository, settings):
    """Load every model, in order; one that cannot be loaded stops the server."""
    for served in repository:
        uri = served.uri
        try:
            served.load(repository.metrics)
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            logger.debug("load_model traceback", exc_info=True)
            stop_worker(f"error: {model_label(settings, served.settings)}plugin {type(served.plugin).__name__} cannot "
                        f"load model '{uri}': {type(e).__name__}: {reason}")
        logger.info("ready: %s serves %s%s on http://%s:%s", type(served.plugin).__name__, uri,
                    f" as {served.name}" if settings.models else "", settings.host, settings.port)
    start_polling(repository, settings.registry_poll_seconds, repository.metrics)
    repository.follow_state_file(repository.metrics)


def stop_worker(line):
    """Log ``line`` and end this worker with the status that makes gunicorn halt the whole server."""
    logger.error("%s", line)
    logging.shutdown()
    os._exit(WORKER_BOOT_ERROR)  # also from a thread: sys.exit would end only the thread


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        settings = args_settings(args)
        if args.print_settings:
            print(settings.as_yaml(), end="")
            return 0
        logging.config.dictConfig(logging_config(settings))
        for model in settings.served_models():
            try:
                check_model_uri(model.model_uri)
            except StartupError as e:
                raise StartupError(f"{model_label(settings, model)}{e}") from None
        prepare_environment(settings, argv)  # may re-execute this command in a created environment
        settings, plugin = check_plugin(settings)
        token = settings.auth_token()
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info("mlflow-pluggable-scoring-server %s: plugin %s, model %s", __version__, plugin,
                ", ".join(model.model_uri for model in settings.served_models()))
    make_server(settings, token).run()
    return 0


def check_plugin(settings):
    """Load each model's plugin in a child process, as a worker will: ``(settings with each model's batching
    resolved, the plugins' names)``.

    The master never runs plugin code: what a plugin module does when it is imported (a Spark
    session, a connection, a thread) must belong to the worker that uses it, not be shared by
    every worker forked from the master. Raises :class:`StartupError` with the child's reason.
    """
    models = settings.served_models()
    report = in_child(_plugins_report, settings, models, ended="a plugin cannot be loaded: its import ended the process")
    resolved = [model.model_copy(update={"max_batch_size": m["batch"][0], "max_batch_time_ms": m["batch"][1]})
                for model, m in zip(models, report)]
    return with_models(settings, resolved), ", ".join(m["plugin"] for m in report)


def _plugins_report(settings, models):
    """In the child of :func:`check_plugin`: each model's plugin and batching, or StartupError naming the model."""
    report = []
    for model in models:
        try:
            plugin = load_plugin(model.plugin, model.plugin_class, model.plugin_options)
            resolved = batch_settings(model, plugin)
        except StartupError as e:
            raise StartupError(f"{model_label(settings, model)}{e}") from None
        except BaseException as e:  # noqa: BLE001 -- whatever it is, the parent says it in one line
            raise StartupError(f"{model_label(settings, model)}plugin '{model.plugin}' cannot be loaded: "
                               f"{type(e).__name__}: {e}") from None
        report.append({"batch": [resolved.max_batch_size, resolved.max_batch_time_ms], "plugin": repr(plugin)})
    return report


def with_models(settings, models):
    """``settings`` serving ``models`` (its served models, their batching resolved)."""
    if not settings.models:  # one model: its batching is the top level's
        return settings.model_copy(update={"max_batch_size": models[0].max_batch_size,
                                           "max_batch_time_ms": models[0].max_batch_time_ms})
    return settings.model_copy(update={"models": models})


if __name__ == "__main__":
    sys.exit(main())
