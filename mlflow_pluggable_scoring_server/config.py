"""Settings: one typed object, from defaults, then the conf file, then the command line.

Every field is documented here; ``--help`` and the README's reference table come
from these docs.
"""

import dataclasses
import logging
from dataclasses import dataclass, field

from .errors import StartupError
from .plugin import DEFAULT_PLUGIN_CLASS

DEFAULT_LOG_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"


def _doc(text, **kwargs):
    return field(metadata={"doc": text}, **kwargs)


@dataclass
class Settings:
    host: str = _doc("Address to listen on; 0.0.0.0 to accept other machines.", default="127.0.0.1")
    port: int = _doc("Port to listen on.", default=5005)
    plugin: str = _doc("Path of the plugin's Python file.", default=None)
    plugin_class: str = _doc("Plugin class in that file, as module.Class.", default=DEFAULT_PLUGIN_CLASS)
    model_uri: str = _doc("MLflow model URI: a path, file:, runs:/, models:/name/version|stage, models:/name@alias.", default=None)
    packages: list = _doc("Extra pip packages the plugin needs, installed before start-up.", default_factory=list)
    workers: int = _doc("Worker processes; each loads its own copy of the model.", default=1)
    max_request_bytes: int = _doc("Largest request body accepted; larger ones get 413.", default=16 * 1024 * 1024)
    logging: dict = _doc("Logging 'level' (DEBUG, INFO, ...) and 'format' (Python logging format).", default_factory=dict)

    @property
    def log_level(self):
        return str(self.logging.get("level", "INFO")).upper()

    @property
    def log_format(self):
        return self.logging.get("format", DEFAULT_LOG_FORMAT)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


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
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("packages"), str):
        values["packages"] = [p for p in values["packages"].split(",") if p.strip()]
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s):
    def fail(message):
        raise StartupError(message)

    for name, kind in (("port", int), ("workers", int), ("max_request_bytes", int)):
        if not isinstance(getattr(s, name), kind) or isinstance(getattr(s, name), bool):
            fail(f"{name} must be an integer, not {getattr(s, name)!r}")
    if not 0 < s.port < 65536:
        fail(f"port must be between 1 and 65535, not {s.port}")
    if s.workers < 1:
        fail(f"workers must be at least 1, not {s.workers}")
    if s.max_request_bytes < 1:
        fail(f"max_request_bytes must be positive, not {s.max_request_bytes}")
    if not isinstance(s.packages, list) or not all(isinstance(p, str) for p in s.packages):
        fail("packages must be a list of pip requirement strings")
    if not isinstance(s.logging, dict):
        fail("logging must be a mapping with 'level' and 'format'")
    if not isinstance(logging.getLevelName(s.log_level), int):
        fail(f"logging level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not {s.log_level!r}")
    if not s.plugin:
        fail("no plugin: give --plugin-file or 'plugin' in the conf file")
    if not s.model_uri:
        fail("no model: give --model-uri or 'model_uri' in the conf file")
