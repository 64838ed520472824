"""Settings: one typed object, from defaults, then the conf file, then the command line.

Every field is documented here; ``--help`` and the README's reference table come
from these docs.
"""

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field

from .envs import ENV_MANAGERS, default_env_manager
from .errors import StartupError
from .plugin import DEFAULT_PLUGIN, DEFAULT_PLUGIN_CLASS

DEFAULT_LOG_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"
AUTH_TOKEN_ENV = "MLFLOW_PSS_AUTH_TOKEN"
ENDPOINT_GROUPS = ("health", "metrics", "docs")


def _doc(text, **kwargs):
    return field(metadata={"doc": text}, **kwargs)


@dataclass
class Settings:
    host: str = _doc("Address to listen on; 0.0.0.0 to accept other machines.", default="127.0.0.1")
    port: int = _doc("Port to listen on.", default=5005)
    plugin: str = _doc(
        "The plugin: the path of its Python file, or the name of an installed plugin"
        f" (built in: pyfunc, image). Default: {DEFAULT_PLUGIN}, any MLflow model as `mlflow models serve` serves it.",
        default=DEFAULT_PLUGIN,
    )
    plugin_class: str = _doc("Plugin class in the plugin file, as module.Class.", default=DEFAULT_PLUGIN_CLASS)
    plugin_options: dict = _doc("Options passed to the plugin class as keyword arguments.", default_factory=dict)
    model_uri: str = _doc("MLflow model URI: a path, file:, runs:/, models:/name/version|stage, models:/name@alias.", default=None)
    packages: list = _doc("Extra pip packages the plugin needs, installed before start-up.", default_factory=list)
    env_manager: str = _doc(
        "Where packages go: uv or virtualenv build a cached environment and run the server in it;"
        " local installs them into the server's own environment. Default: uv when there is one.",
        default_factory=default_env_manager,
    )
    install_model_requirements: bool = _doc(
        "Also install the requirements.txt that MLflow saved with the model, with the packages.",
        default=False,
    )
    workers: int = _doc("Worker processes; each loads its own copy of the model.", default=1)
    max_request_bytes: int = _doc("Largest request body accepted; larger ones get 413.", default=16 * 1024 * 1024)
    max_image_pixels: int = _doc("Largest image (width x height) a plugin may decode; larger ones get 400.", default=25_000_000)
    request_timeout: float = _doc("Seconds a prediction may take; slower ones get 504.", default=60.0)
    read_timeout: float = _doc(
        "Seconds a client has to send its whole request (head and body) from its first byte;"
        " a slower one gets 408 and its connection is closed.",
        default=30.0,
    )
    max_batch_size: int = _doc(
        "Most requests merged into one model call, for a plugin that can batch (BatchPlugin);"
        " 1: no batching. Default: the plugin's max_batch_size, else 1.",
        default=None,
    )
    max_batch_time_ms: float = _doc(
        "Milliseconds the first request of a batch waits at most for others to join it"
        " (only while other requests are being decoded)."
        " Default: the plugin's max_batch_time_ms, else 2.",
        default=None,
    )
    graceful_timeout: float = _doc("Seconds to finish requests in flight after SIGTERM.", default=30.0)
    auth_token_file: str = _doc(
        f"File holding the bearer token callers must send (or set {AUTH_TOKEN_ENV}); none: no auth.", default=None
    )
    public_endpoints: list = _doc(
        "Endpoint groups open without a token when auth is on: health, metrics, docs.", default_factory=lambda: ["health"]
    )
    logging: dict = _doc("Logging 'level' (DEBUG, INFO, ...) and 'format' (Python logging format).", default_factory=dict)

    def auth_token(self):
        """The bearer token from AUTH_TOKEN_ENV or auth_token_file, or None when auth is off."""
        import os

        token = os.environ.get(AUTH_TOKEN_ENV)
        if not token and self.auth_token_file:
            try:
                with open(self.auth_token_file) as f:
                    token = f.read().strip()
            except OSError as e:
                raise StartupError(f"cannot read auth_token_file '{self.auth_token_file}': {e.strerror}") from None
            if not token:
                raise StartupError(f"auth_token_file '{self.auth_token_file}' is empty")
        return token or None

    @property
    def log_level(self):
        return str(self.logging.get("level", "INFO")).upper()

    @property
    def log_format(self):
        return self.logging.get("format", DEFAULT_LOG_FORMAT)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def flag_help(name):
    """A flag's help: its field's doc and its conf key."""
    return f"{FIELDS[name].metadata['doc']} [conf: {name}]"


def plugin_option(text):
    """``KEY=VALUE`` as ``(key, value)``, the value read as YAML."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"the value of {key.strip()} is not valid YAML") from None


def add_plugin_flags(parser):
    """The flags choosing the plugin, for every command that loads one."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--plugin-file", dest="plugin", metavar="FILE", help="Path of the plugin's Python file. [conf: plugin]")
    which.add_argument("--plugin", dest="plugin", metavar="NAME", help=flag_help("plugin"))
    parser.add_argument("--plugin-class", help=flag_help("plugin_class"))
    parser.add_argument("--plugin-option", dest="plugin_options", metavar="KEY=VALUE", action="append", type=plugin_option,
                        help=flag_help("plugin_options") + " Repeat for several; VALUE is read as YAML (28, [28, 28], true, text).")


def read_conf_file(path):
    """The mapping in a YAML conf file, or StartupError saying why it cannot be used."""
    import yaml

    try:
        with open(path) as f:
            conf = yaml.safe_load(f)
    except OSError as e:
        raise StartupError(f"cannot read conf file '{path}': {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise StartupError(f"conf file '{path}' is not valid YAML{where}") from None
    if conf is None:
        return {}
    if not isinstance(conf, dict):
        raise StartupError(f"conf file '{path}' must be a mapping of keys to values")
    unknown = sorted(set(conf) - set(FIELDS))
    if unknown:
        raise StartupError(f"conf file '{path}': unknown key(s) {', '.join(unknown)}; known keys: {', '.join(FIELDS)}")
    return conf


def build_settings(conf_path=None, **overrides):
    """Settings from the conf file (if any) with the non-None ``overrides`` (flags) on top."""
    values = read_conf_file(conf_path) if conf_path else {}
    options = overrides.pop("plugin_options", None)
    values.update({k: v for k, v in overrides.items() if v is not None})
    base = values.get("plugin_options") or {}
    if options and isinstance(base, dict):  # flags override the file's options one by one
        values["plugin_options"] = {**base, **dict(options)}
    for name in ("packages", "public_endpoints"):
        if isinstance(values.get(name), str):
            values[name] = [p.strip() for p in values[name].split(",") if p.strip()]
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s):
    def fail(message):
        raise StartupError(message)

    for name, kind in (("port", int), ("workers", int), ("max_request_bytes", int), ("max_image_pixels", int),
                       ("request_timeout", (int, float)), ("read_timeout", (int, float)),
                       ("graceful_timeout", (int, float))):
        if not isinstance(getattr(s, name), kind) or isinstance(getattr(s, name), bool):
            fail(f"{name} must be a number, not {getattr(s, name)!r}")
    for name in ("max_image_pixels", "request_timeout", "read_timeout", "graceful_timeout"):
        if getattr(s, name) <= 0:
            fail(f"{name} must be positive, not {getattr(s, name)}")
    if not isinstance(s.public_endpoints, list) or not set(s.public_endpoints) <= set(ENDPOINT_GROUPS):
        fail(f"public_endpoints must be a list of: {', '.join(ENDPOINT_GROUPS)}")
    if not 0 < s.port < 65536:
        fail(f"port must be between 1 and 65535, not {s.port}")
    if s.workers < 1:
        fail(f"workers must be at least 1, not {s.workers}")
    if s.max_request_bytes < 1:
        fail(f"max_request_bytes must be positive, not {s.max_request_bytes}")
    if not isinstance(s.packages, list) or not all(isinstance(p, str) for p in s.packages):
        fail("packages must be a list of pip requirement strings")
    if s.env_manager not in ENV_MANAGERS:
        fail(f"env_manager must be one of {', '.join(ENV_MANAGERS)}, not {s.env_manager!r}")
    if not isinstance(s.install_model_requirements, bool):
        fail(f"install_model_requirements must be true or false, not {s.install_model_requirements!r}")
    if not isinstance(s.logging, dict):
        fail("logging must be a mapping with 'level' and 'format'")
    if not isinstance(logging.getLevelName(s.log_level), int):
        fail(f"logging level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not {s.log_level!r}")
    if not isinstance(s.plugin, str) or not s.plugin:
        fail("plugin must be the path of a plugin file or the name of an installed plugin")
    if not isinstance(s.plugin_options, dict) or not all(isinstance(k, str) and k.isidentifier() for k in s.plugin_options):
        fail("plugin_options must be a mapping of option names to values")
    if not s.model_uri:
        fail("no model: give --model-uri or 'model_uri' in the conf file")
