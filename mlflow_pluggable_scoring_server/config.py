"""Settings: one typed object (pydantic) from defaults, the conf file, environment variables and flags.

Each field is declared once, with its type, bounds and doc. The conf file's keys, the
``MLFLOW_PSS_*`` environment variables, the command line's flags and ``--help``, the
deployments target's help and the README's reference table all come from these fields, so
they cannot drift apart. A bad value stops start-up with one line naming the key.
"""

import argparse
import logging
import os
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Annotated

from .envs import ENV_MANAGERS, default_env_manager
from .errors import StartupError
from .plugin import DEFAULT_PLUGIN, DEFAULT_PLUGIN_CLASS

DEFAULT_LOG_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"
AUTH_TOKEN_ENV = "MLFLOW_PSS_AUTH_TOKEN"
ENV_PREFIX = "MLFLOW_PSS_"
PORT_ENV = "PORT"  # the port a platform gives a container (KServe, Cloud Run, Knative); MLFLOW_PSS_PORT wins over it
ENDPOINT_GROUPS = ("health", "metrics", "docs")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _not_bool(value):
    if isinstance(value, bool):  # YAML's true is not a number of workers
        raise ValueError("Input should be a number, not true or false")
    return value


def _comma_list(value):
    """A list may be written ``a,b`` (a flag, an environment variable) as well as a YAML list."""
    return [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value


Int = Annotated[int, BeforeValidator(_not_bool)]
Number = Annotated[float, BeforeValidator(_not_bool)]
CommaList = BeforeValidator(_comma_list)


def setting(default, doc, *, shown=None, flag=True, **constraints):
    """A field: its default, its doc (Markdown: the README shows it, ``--help`` shows it as text),
    how the README shows its default when not as is (``shown``), and whether it has a flag."""
    factory = default if callable(default) else None
    value = {} if factory else {"default": default}
    return Field(**value, default_factory=factory, description=doc, json_schema_extra={"shown": shown, "flag": flag},
                 **constraints)


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: str = "INFO"
    format: str = DEFAULT_LOG_FORMAT

    @field_validator("level")
    @classmethod
    def _known_level(cls, value):
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"should be one of {', '.join(LOG_LEVELS)}")
        return value.upper()


MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a name in URL paths
# The keys a model of ``models:`` takes besides its name and URI; those it leaves out come from the top level.
MODEL_KEYS = ("plugin", "plugin_class", "plugin_options", "packages", "max_batch_size", "max_batch_time_ms")


class ModelSettings(BaseModel):
    """One served model: its name, its URI, its plugin and its batching."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=MODEL_NAME)
    model_uri: str = Field(min_length=1)
    plugin: str = Field(DEFAULT_PLUGIN, min_length=1)
    plugin_class: str = Field(DEFAULT_PLUGIN_CLASS, min_length=1)
    plugin_options: dict[str, Any] = Field(default_factory=dict)
    packages: Annotated[list[str], CommaList] = Field(default_factory=list)
    max_batch_size: Optional[Int] = Field(None, ge=1)
    max_batch_time_ms: Optional[Number] = Field(None, ge=0, le=60_000)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = setting("127.0.0.1", "Address to listen on; `0.0.0.0` to accept other machines.")
    port: Int = setting(5005, f"Port to listen on; the `{PORT_ENV}` environment variable (KServe's, Cloud Run's) overrides the conf"
                         f" file's, and `{ENV_PREFIX}PORT` and the flag override it.", ge=1, le=65535)
    plugin: str = setting(
        DEFAULT_PLUGIN,
        "The plugin: the path of its Python file (`--plugin-file`), or the name of an installed plugin (`--plugin`):"
        " `pyfunc` (any MLflow model, as `mlflow models serve` serves it, see [Coming from MLflow](#coming-from-mlflow)),"
        " `image` (see [Built-in plugins](#built-in-plugins)) or [one from a package](#plugins-in-a-package).",
        min_length=1,
    )
    plugin_class: str = setting(DEFAULT_PLUGIN_CLASS, "Plugin class in the plugin file, as `module.Class` (only `Class` is looked up).",
                                min_length=1)
    plugin_options: dict[str, Any] = setting(
        dict, "Passed to the plugin class as keyword arguments: a mapping in the file; `KEY=VALUE` on the command line,"
        " repeatable, VALUE read as YAML (`28`, `[28, 28]`, `RGB`).")
    model_uri: Optional[str] = setting(None, "MLflow model URI (see [Model URIs](#model-uris)).", min_length=1)
    model_name: Optional[str] = setting(
        None, "The model's name in the Open Inference Protocol's paths (`/v2/models/NAME`).",
        shown="the registered model's name for a `models:/` URI, else `mlflow-model`", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    packages: Annotated[list[str], CommaList] = setting(
        list, "Extra pip packages the plugin needs (comma-separated, or a YAML list in the file);"
        " see [Plugin packages and environments](#plugin-packages-and-environments).")
    env_manager: Literal[ENV_MANAGERS] = setting(
        default_env_manager, "Where the packages go: `uv` or `virtualenv` create a cached environment and run the server"
        " in it; `local` installs them into the server's own environment.", shown="`uv` if there is one, else `virtualenv`")
    install_model_requirements: bool = setting(
        False, "Also install the model's `requirements.txt` (saved by MLflow with the model).")
    workers: Int = setting(1, "gunicorn worker processes; each loads its own copy of the model, unless it is preloaded.", ge=1)
    preload: bool = setting(
        True, "Load a model once, in the master process before the workers fork, when its plugin says it is fork-safe"
        " (`pyfunc` for scikit-learn models, the sklearn wine sample) and its URI is a local path: the workers share"
        " its memory. Other models load in each worker. See [Workers and memory](#workers-and-memory).")
    cpu_affinity: bool = setting(
        True, "Run each worker's Python threads on one CPU, the workers spread over the CPUs (the threads a model library"
        " starts keep every CPU). Skipped with one CPU, or CPUs shared under a smaller quota. See"
        " [Workers and CPUs](#workers-and-cpus).")
    max_request_bytes: Int = setting(16 * 1024 * 1024, "Largest request body; larger ones get 413, chunked bodies included.", ge=1)
    max_image_pixels: Int = setting(25_000_000, "Largest image (width x height) a plugin may decode; larger ones get 400.", ge=1)
    request_timeout: Number = setting(60, "Seconds a prediction may take; slower ones get 504.", gt=0)
    read_timeout: Number = setting(
        30, "Seconds a client has to send its whole request (head and body) from its first byte; a slower one gets 408"
        " and its connection is closed. See [Reliability](#reliability).", gt=0)
    write_timeout: Number = setting(
        30, "Seconds a client may take none of an answer being sent to it; then its connection is closed and the"
        " thread sending it freed. See [Reliability](#reliability).", gt=0)
    max_batch_size: Optional[Int] = setting(
        None, "Most requests merged into one model call, for a plugin that can batch; `1`: no batching."
        " See [Batching](#batching).", shown="the plugin's, else `1`", ge=1)
    max_batch_time_ms: Optional[Number] = setting(
        None, "Milliseconds the first request of a batch waits at most for others to join it (only while other requests"
        " are being decoded, or, when requests waited behind the last batch, for that batch's clients to send"
        " again).", shown="the plugin's, else `2`", ge=0, le=60_000)
    graceful_timeout: Number = setting(30, "Seconds to finish the requests in flight after SIGTERM.", gt=0)
    auth_token_file: Optional[str] = setting(
        None, f"File holding the bearer token callers must send (or set `{AUTH_TOKEN_ENV}`); none: no auth.")
    public_endpoints: Annotated[list[Literal[ENDPOINT_GROUPS]], CommaList] = setting(
        lambda: ["health"], "With auth on, the endpoint groups open without a token: `health`, `metrics`, `docs`.",
        shown="`[health]`")
    models: list[ModelSettings] = setting(
        list, "Several models in one server: a list of mappings, each with `name`, `model_uri` and any of `plugin`,"
        " `plugin_class`, `plugin_options`, `packages`, `max_batch_size`, `max_batch_time_ms` (by default the top"
        " level's). Instead of `model_uri`. See [Serving several models](#serving-several-models).", shown="", flag=False)
    registry_poll_seconds: Optional[Number] = setting(
        None, "Every this many seconds, each worker looks up the version a `models:/name@alias`, `/latest` or"
        " `/Stage` URI points at, and switches to a new one with no failed request. See"
        " [Following the registry](#following-the-registry).", shown="off", gt=0)
    model_repository: bool = setting(
        False, "Enable the V2 model repository extension: `POST /v2/repository/index`, `.../models/NAME/load` and"
        " `.../unload` (behind the token when auth is on).")
    logging: LoggingSettings = setting(
        LoggingSettings, "`level` and `format` (Python `logging` format) for the server's and gunicorn's logs."
        " At `DEBUG`, every request is logged too.", shown="`INFO`", flag=False)

    @field_validator("plugin_options")
    @classmethod
    def _option_names(cls, value):
        bad = [k for k in value if not k.isidentifier()]
        if bad:
            raise ValueError("option names must be Python identifiers")
        return value

    @model_validator(mode="before")
    @classmethod
    def _models_inherit_the_top_level(cls, data):
        """A model of ``models:`` takes the top level's plugin and batching keys it does not give."""
        if isinstance(data, dict) and isinstance(data.get("models"), list):
            inherited = {key: data[key] for key in MODEL_KEYS if key in data}
            data = {**data, "models": [{**inherited, **m} if isinstance(m, dict) else m for m in data["models"]]}
        return data

    @field_validator("models")
    @classmethod
    def _names_of_their_own(cls, models):
        names = [m.name for m in models]
        twice = [name for i, name in enumerate(names) if name in names[:i]]
        if twice:
            raise ValueError(f"two models are named {twice[0]!r}: each needs a name of its own")
        return models

    @model_validator(mode="after")
    def _one_way_to_name_models(self):
        if self.models and self.model_uri:
            raise ValueError("give model_uri (one model) or models (several), not both")
        return self

    def served_models(self):
        """The models to serve, as :class:`ModelSettings`: ``models``, or the one of ``model_uri``."""
        from .models import model_name

        if self.models:
            return list(self.models)
        # Not validated again: a registered model's name may hold characters a models: entry's may not.
        return [ModelSettings.model_construct(name=self.model_name or model_name(self.model_uri), model_uri=self.model_uri,
                                              **{key: getattr(self, key) for key in MODEL_KEYS})]

    def all_packages(self):
        """Every model's packages in one list: the models share one environment (and say so). StartupError when
        two models pin one package differently: one environment cannot hold both."""
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name

        merged, by_name = [], {}
        for model in self.served_models():
            for package in model.packages:
                if package in merged:
                    continue
                try:
                    name = canonicalize_name(Requirement(package).name)
                except InvalidRequirement:  # a path or a URL: the package manager says what is wrong
                    name = package
                if name in by_name:
                    raise StartupError(f"models need both {by_name[name]} and {package}: one environment cannot hold"
                                       " both; serve them from two servers")
                by_name[name] = package
                merged.append(package)
        if merged and len(self.models) > 1:
            logging.getLogger(__name__).warning("the models share one environment with their packages merged: %s",
                                                ", ".join(merged))
        return merged

    def auth_token(self):
        """The bearer token from AUTH_TOKEN_ENV or auth_token_file, or None when auth is off."""
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

    def as_yaml(self):
        """The settings as a conf file that gives them."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @property
    def log_level(self):
        return self.logging.level

    @property
    def log_format(self):
        return self.logging.format


FIELDS = Settings.model_fields
TEXT_FIELDS = {name for name, f in FIELDS.items() if f.annotation in (str, Optional[str])}
LIST_FIELDS = {name for name, f in FIELDS.items() if getattr(f.annotation, "__origin__", None) is list}


def env_var(name):
    """The environment variable of setting ``name``: ``MLFLOW_PSS_PORT`` for ``port``."""
    return ENV_PREFIX + name.upper()


def plain(doc):
    """A Markdown doc as plain text: link texts without their targets, no backticks."""
    return re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", doc).replace("`", "")


def default_text(name):
    """How a setting's default is shown (Markdown), or '' when it has none."""
    f = FIELDS[name]
    if f.json_schema_extra["shown"]:
        return f.json_schema_extra["shown"]
    default = f.get_default(call_default_factory=True)
    if default is None:
        return ""
    return f"`{str(default).lower() if isinstance(default, bool) else default}`"


def describe(name):
    """A setting's doc and default, as plain text."""
    default = default_text(name)
    return plain(FIELDS[name].description) + (f" Default: {plain(default)}." if default else "")


def flag_help(name):
    """A flag's help: :func:`describe`, then its conf key and environment variable."""
    return f"{describe(name)} [conf: {name}; env: {env_var(name)}]"


def parse_text(name, text):
    """A setting's value written as text (an environment variable, a deployment's ``-C``): text fields and
    comma lists as they are, anything else read as YAML. Raises StartupError when it is not YAML."""
    import yaml

    if name in TEXT_FIELDS or name in LIST_FIELDS and not text.lstrip().startswith("["):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise StartupError(f"{name}: the value is not valid YAML") from None


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
    which.add_argument("--plugin-file", dest="plugin", metavar="FILE", help="Path of the plugin's Python file. " + flag_help("plugin"))
    which.add_argument("--plugin", dest="plugin", metavar="NAME", help="Name of an installed plugin. " + flag_help("plugin"))
    parser.add_argument("--plugin-class", help=flag_help("plugin_class"))
    parser.add_argument("--plugin-option", dest="plugin_options", metavar="KEY=VALUE", action="append", type=plugin_option,
                        help=flag_help("plugin_options"))


def add_setting_flags(parser, skip=()):
    """``--conf`` and a flag for every setting that has one (but those named in ``skip``), values left as text
    for :func:`build_settings`."""
    parser.add_argument("--conf", metavar="FILE", help="YAML conf file with any of the keys below.")
    for name, f in FIELDS.items():
        if name in skip:
            continue
        if name.startswith("plugin"):
            if name == "plugin":
                add_plugin_flags(parser)
        elif f.annotation is bool:  # --flag, and --no-flag for one that is on by default
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(f"--{name.replace('_', '-')}", action=action, default=None, help=flag_help(name))
        elif f.json_schema_extra["flag"]:
            parser.add_argument(f"--{name.replace('_', '-')}", metavar=name.split("_")[-1].upper(), help=flag_help(name))


def reference_table(parser):
    """The README's table of settings (Markdown), from ``parser``'s flags and the fields."""
    flags = {}
    for action in parser._actions:
        if action.dest in FIELDS:
            flags.setdefault(action.dest, []).extend(action.option_strings)
    rows = ["| Flag | Conf key | Default | Meaning |", "|---|---|---|---|",
            "| `--conf` | | | YAML conf file with any of the keys below. |"]
    for name, f in FIELDS.items():
        shown = ", ".join(f"`{flag}`" for flag in flags.get(name, []))
        rows.append(f"| {shown} | `{name}` | {default_text(name)} | {f.description} |")
    return "\n".join(rows)


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
    unknown = sorted(set(map(str, conf)) - set(FIELDS))
    if unknown:
        raise StartupError(f"conf file '{path}': unknown key(s) {', '.join(unknown)}; known keys: {', '.join(FIELDS)}")
    return conf


def environment_settings(environ=None):
    """The settings given by ``MLFLOW_PSS_*`` environment variables, read as :func:`parse_text` reads text."""
    environ = os.environ if environ is None else environ
    values = {}
    for name in FIELDS:
        if env_var(name) in environ:
            try:
                values[name] = parse_text(name, environ[env_var(name)])
            except StartupError as e:
                raise StartupError(f"environment variable {env_var(name)}: {e}") from None
    return values


def build_settings(conf_path=None, **overrides):
    """Settings from the defaults, the conf file (if any), the environment, then the non-None ``overrides`` (flags).

    Raises StartupError with one line naming the first bad key and where its value came from.
    """
    values, origin = {}, {}
    layers = [(read_conf_file(conf_path) if conf_path else {}, f"conf file '{conf_path}'"),
              ({"port": os.environ[PORT_ENV]} if os.environ.get(PORT_ENV) else {}, f"environment variable {PORT_ENV}"),
              (environment_settings(), "environment variable {env}"),
              ({k: v for k, v in overrides.items() if v is not None and k != "plugin_options"}, None)]
    for layer, where in layers:
        values.update(layer)
        origin.update({key: where.format(env=env_var(key)) if where else None for key in layer})
    options = overrides.get("plugin_options")
    if options and isinstance(values.get("plugin_options", {}), dict):  # flags override the file's options one by one
        values["plugin_options"] = {**values.get("plugin_options", {}), **dict(options)}
    try:
        settings = Settings(**values)
    except ValidationError as e:
        error = e.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "settings"
        where = origin.get(error["loc"][0]) if error["loc"] else None
        message = error["msg"].removeprefix("Value error, ").rstrip(".")
        raise StartupError(f"{key}{f' (from {where})' if where else ''}: {message}") from None
    if not settings.model_uri and not settings.models:
        raise StartupError("no model: give --model-uri or 'model_uri' in the conf file")
    return settings
