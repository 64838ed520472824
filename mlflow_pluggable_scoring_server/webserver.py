"""Command line: read the settings, check the plugin and model URI, serve with gunicorn.

    python -m mlflow_pluggable_scoring_server.webserver --conf plugin_samples/sklearn_wine/conf.yaml
    python -m mlflow_pluggable_scoring_server.webserver --plugin-file P --model-uri URI [--port 5005]

The master checks the plugin in a child process and does not import it: each gunicorn
worker imports the plugin and loads its own model after the fork (TensorFlow, ONNX
Runtime and Spark are not fork-safe, and a plugin's import-time state is the worker's).
Only a local model whose plugin says it is fork-safe (``fork_safe``; scikit-learn's) is
loaded by the master, before the fork, and shared by the workers (``preload``).
"""

import argparse
import functools
import gc
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
from .models import check_model_uri, in_child, local_path
from .plugin import load_plugin
from .rollout import start_polling

logger = logging.getLogger("mlflow_pluggable_scoring_server")

WORKER_BOOT_ERROR = 3  # gunicorn halts the whole server when a worker exits with this
READER_THREADS = 32  # per worker: requests answered (or large bodies read) at once


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


def make_server(settings, token, preloaded=None):
    """A gunicorn application serving ``settings``' plugin and model; each worker loads both, but the models
    in ``preloaded`` (see :func:`preload_models`), which the workers share."""
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
            # Threads answer the requests the poller has read whole (and read on large or chunked bodies);
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
            return load_app(settings, token, preloaded)

    return Server()


def load_app(settings, token, preloaded=None):
    """Build the WSGI app in this (worker) process with the plugins imported here, and load the models beside it;
    those in ``preloaded`` (name -> (plugin, model), loaded by the master) are served as they are.

    The app answers at once in-process; the worker takes connections only once every model is
    loaded. A plugin or a model that cannot be loaded stops the server, naming the model.
    """
    preloaded = preloaded or {}
    plugins = []
    for model in settings.served_models():
        if model.name in preloaded:
            plugins.append(preloaded[model.name][0])
            continue
        try:
            plugins.append(load_plugin(model.plugin, model.plugin_class, model.plugin_options))
        except StartupError as e:
            stop_worker(f"error: {model_label(settings, model)}{e}")
    app, repository = build_app(settings, plugins, token)
    threading.Thread(target=load_models, args=(repository, settings, preloaded), name="load-models", daemon=True).start()
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


def load_models(repository, settings, preloaded=None):
    """Load every model, in order (those in ``preloaded`` are loaded already); one that cannot be loaded stops the
    server."""
    preloaded = preloaded or {}
    for served in repository:
        uri = served.uri
        load = (lambda uri, model=preloaded[served.name][1]: model) if served.name in preloaded else None
        try:
            served.load(repository.metrics, load)
        except Exception as e:
            stop_worker(f"error: {load_failure(settings, served.settings, served.plugin, e)}")
        logger.info("ready: %s serves %s%s on http://%s:%s", type(served.plugin).__name__, uri,
                    f" as {served.name}" if settings.models else "", settings.host, settings.port)
    start_polling(repository, settings.registry_poll_seconds, repository.metrics)
    repository.follow_state_file(repository.metrics)


def load_failure(settings, model, plugin, e):
    """The one line that says why ``plugin`` cannot load ``model`` (its settings)."""
    reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
    logger.debug("load_model traceback", exc_info=True)
    return (f"{model_label(settings, model)}plugin {type(plugin).__name__} cannot load model '{model.model_uri}': "
            f"{type(e).__name__}: {reason}")


def preload_models(settings, names):
    """Load the models named in ``names`` here, in the master, before the workers fork: they share its memory.

    Returns ``{name: (plugin, model)}``. The objects made so far are then frozen (``gc.freeze``):
    the workers' garbage collections do not write to their pages, which stay shared.
    """
    preloaded = {}
    for model in settings.served_models():
        if model.name not in names:
            continue
        plugin = load_plugin(model.plugin, model.plugin_class, model.plugin_options)
        try:
            preloaded[model.name] = (plugin, plugin.load_model(model.model_uri))
        except Exception as e:
            raise StartupError(load_failure(settings, model, plugin, e)) from None
        logger.info("loaded %s before forking the workers: %s share it", model.model_uri,
                    "the worker" if settings.workers == 1 else f"the {settings.workers} workers")
    if preloaded:
        gc.collect()
        gc.freeze()
    return preloaded


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
        settings, plugin, shareable = check_plugin(settings)
        token = settings.auth_token()
        preloaded = preload_models(settings, shareable)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info("mlflow-pluggable-scoring-server %s: plugin %s, model %s", __version__, plugin,
                ", ".join(model.model_uri for model in settings.served_models()))
    make_server(settings, token, preloaded).run()
    return 0


def check_plugin(settings):
    """Load each model's plugin in a child process, as a worker will: ``(settings with each model's batching
    resolved, the plugins' names, the names of the models that may be preloaded)``.

    The master runs no plugin code here: what a plugin module does when it is imported (a Spark
    session, a connection, a thread) must belong to the worker that uses it, not be shared by
    every worker forked from the master. Only a plugin that says its model is fork-safe is then
    imported by the master, to preload it (:func:`preload_models`). Raises :class:`StartupError`
    with the child's reason.
    """
    models = settings.served_models()
    report = in_child(_plugins_report, settings, models, ended="a plugin cannot be loaded: its import ended the process")
    resolved = [model.model_copy(update={"max_batch_size": m["batch"][0], "max_batch_time_ms": m["batch"][1]})
                for model, m in zip(models, report)]
    shareable = [model.name for model, m in zip(models, report) if m["fork_safe"]]
    return with_models(settings, resolved), ", ".join(m["plugin"] for m in report), shareable


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
        report.append({"batch": [resolved.max_batch_size, resolved.max_batch_time_ms], "plugin": repr(plugin),
                       "fork_safe": settings.preload and fork_safe(plugin, model.model_uri)})
    return report


def fork_safe(plugin, model_uri):
    """Whether ``plugin`` says its model at ``model_uri`` may be loaded before the fork (only a local model: one in
    a registry or a run would open a connection the workers would share)."""
    method = getattr(plugin, "fork_safe", None)  # a plugin may not subclass BasePlugin
    if local_path(model_uri) is None or not callable(method):
        return False
    try:
        return method(model_uri) is True
    except Exception as e:  # a question it cannot answer: not fork-safe
        logger.warning("%s.fork_safe failed, the model loads in each worker: %s: %s", type(plugin).__name__,
                       type(e).__name__, e)
        return False


def with_models(settings, models):
    """``settings`` serving ``models`` (its served models, their batching resolved)."""
    if not settings.models:  # one model: its batching is the top level's
        return settings.model_copy(update={"max_batch_size": models[0].max_batch_size,
                                           "max_batch_time_ms": models[0].max_batch_time_ms})
    return settings.model_copy(update={"models": models})


if __name__ == "__main__":
    sys.exit(main())
