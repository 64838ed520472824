"""Command line: read the settings, check the plugin and model URI, serve with gunicorn.

    python -m mlflow_pluggable_scoring_server.webserver --conf plugin_samples/sklearn_wine/conf.yaml
    python -m mlflow_pluggable_scoring_server.webserver --plugin-file P --model-uri URI [--port 5005]

The plugin is imported once in the master process; each gunicorn worker loads its
own model after the fork (TensorFlow, ONNX Runtime and Spark are not fork-safe).
"""

import argparse
import logging
import logging.config
import sys

from . import __version__
from .config import FIELDS, build_settings
from .errors import StartupError
from .models import check_model_uri
from .packages import install_packages
from .plugin import load_plugin

logger = logging.getLogger("mlflow_pluggable_scoring_server")

WORKER_BOOT_ERROR = 3  # gunicorn halts the whole server when a worker exits with this


def parse_args(argv=None):
    def doc(name):
        return FIELDS[name].metadata["doc"] + (" [conf: %s]" % name)

    p = argparse.ArgumentParser(
        prog="mlflow-pluggable-scoring-server",
        description="Serve an MLflow model through a plugin. Flags override the conf file.",
        epilog="Other commands: `mlflow-pluggable-scoring-server commands` lists them.",
    )
    p.add_argument("--conf", help="YAML conf file with any of the keys below.")
    p.add_argument("--host", help=doc("host"))
    p.add_argument("--port", type=int, help=doc("port"))
    p.add_argument("--plugin-file", dest="plugin", metavar="FILE", help=doc("plugin"))
    p.add_argument("--plugin-class", help=doc("plugin_class"))
    p.add_argument("--model-uri", help=doc("model_uri"))
    p.add_argument("--packages", help=doc("packages") + " Comma-separated.")
    p.add_argument("--workers", type=int, help=doc("workers"))
    p.add_argument("--max-request-bytes", type=int, help=doc("max_request_bytes"))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


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


def make_server(settings, plugin):
    """A gunicorn application serving ``plugin`` with ``settings``."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", settings.workers)
            self.cfg.set("loglevel", settings.log_level.lower())
            self.cfg.set("logconfig_dict", logging_config(settings))
            self.cfg.set("proc_name", "mlflow-pluggable-scoring-server")
            # One control socket per user would collide between servers on one machine.
            self.cfg.set("control_socket_disable", True)

        def load(self):
            return load_app(settings, plugin)

    return Server()


def load_app(settings, plugin):
    """Load the model in this (worker) process and build the WSGI app around it."""
    from .app import create_app
    from .scoring import Scorer

    try:
        model = plugin.load_model(settings.model_uri)
    except Exception as e:
        logger.error(
            "error: plugin %s cannot load model '%s': %s: %s",
            type(plugin).__name__, settings.model_uri, type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "",
        )
        logger.debug("load_model traceback", exc_info=True)
        sys.exit(WORKER_BOOT_ERROR)
    logger.info("ready: %s serves %s on http://%s:%s", type(plugin).__name__, settings.model_uri, settings.host, settings.port)
    return create_app(Scorer(plugin, model), settings)


def main(argv=None):
    args = vars(parse_args(argv))
    try:
        settings = build_settings(args.pop("conf"), **args)
        logging.config.dictConfig(logging_config(settings))
        if settings.packages:
            install_packages(settings.packages)
        plugin = load_plugin(settings.plugin, settings.plugin_class)
        check_model_uri(settings.model_uri)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info("mlflow-pluggable-scoring-server %s: plugin %s, model %s", __version__, plugin, settings.model_uri)
    make_server(settings, plugin).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
