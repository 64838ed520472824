"""The MLflow deployments target ``pluggable``: local scoring servers managed with ``mlflow deployments``.

    mlflow deployments create -t pluggable --name wine -m plugin_samples/sklearn_wine/model -C workers=2
    mlflow deployments predict -t pluggable --name wine --input-path rows.json
    mlflow deployments delete -t pluggable --name wine

Each deployment is a server process on this machine, started detached in a session of its
own, and one JSON file in the state directory (``~/.cache/mlflow-pluggable-scoring-server/
deployments``, or ``$MLFLOW_PLUGGABLE_SCORING_SERVER_DEPLOYMENTS``) beside the server's conf
file and log. A process is known by its pid *and* its start time, so a pid recycled by
another process is never taken for (nor signalled as) a deployment's server.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST

from .config import FIELDS, PORT_ENV, Settings, build_settings, describe, env_var, parse_text
from .errors import StartupError
from .locks import exclusive_lock
from .models import check_model_uri, local_path
from .plugin import is_plugin_file

TARGET = "pluggable"
STATE_DIR_VAR = "MLFLOW_PLUGGABLE_SCORING_SERVER_DEPLOYMENTS"
FLAVOR = "python_function"
# MLflow's own endpoints, which the server answers as `mlflow models serve` does.
READY_PATH = "/ping"
PREDICT_PATH = "/invocations"

DEPLOYMENT_KEYS = {
    "conf": "A conf file of the server (with the keys above); -C keys override it. Read at create and update.",
    "timeout": "Seconds to wait for the server to be ready before giving up. Default: 300.",
    "option.NAME": "One plugin option, as --plugin-option NAME=VALUE does (the value read as YAML).",
}
SERVER_KEYS = [name for name in FIELDS if name != "model_uri"]  # the model comes with -m
DEFAULT_TIMEOUT = 300.0
MLFLOW_INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
LOG_TAIL_LINES = 20


class DeploymentError(MlflowException, click.ClickException):
    """An MlflowException that MLflow's CLI (click) shows as one ``Error: ...`` line, not a traceback."""

    def __init__(self, message, error_code=INVALID_PARAMETER_VALUE):
        MlflowException.__init__(self, message, error_code=error_code)
        click.ClickException.__init__(self, message)


def state_dir():
    """Where deployments are recorded: ``$MLFLOW_PLUGGABLE_SCORING_SERVER_DEPLOYMENTS`` or the default cache folder."""
    return Path(os.environ.get(STATE_DIR_VAR) or Path.home() / ".cache" / "mlflow-pluggable-scoring-server" / "deployments")


def target_help():
    """The help of ``mlflow deployments help -t pluggable``: the target and every ``-C`` key."""
    lines = [
        f"Target '{TARGET}': each deployment is an mlflow-pluggable-scoring-server process on this machine,",
        f"recorded in {state_dir()} (set {STATE_DIR_VAR} to use another folder).",
        "The target URI is just 'pluggable'. Flavor: python_function (the default) only; the plugin",
        "loads the model. The server runs in the folder the deployment was created in, with the",
        "environment of the command that starts it (MLFLOW_TRACKING_URI for models:/ URIs).",
        "",
        "Config: -C KEY=VALUE, values read as YAML (lists: YAML or comma-separated). update merges",
        "its -C keys into the deployment's. Without 'port' a free port is allocated and recorded.",
        "",
    ]
    keys = {name: describe(name) if name != "port" else f"{describe(name).split(' Default:')[0]} Default: a free port."
            for name in SERVER_KEYS}
    keys.update(DEPLOYMENT_KEYS)
    lines += [f"  {key:<28}{doc}" for key, doc in keys.items()]
    return "\n".join(lines)


def run_local(name, model_uri, flavor=None, config=None):
    """Serve ``model_uri`` in the foreground (``mlflow deployments run-local``) until interrupted."""
    _check_name(name)
    _check_flavor(flavor)
    config = _parse_config(config)
    settings = _settings(model_uri, config)
    conf = state_dir() / "run-local" / f"{name}.yaml"
    _write_conf(conf, settings)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec: the server gets the terminal's signals itself and its exit status is the command's.
    os.execve(sys.executable, [sys.executable, "-m", "mlflow_pluggable_scoring_server.webserver", "--conf", str(conf)],
              _server_environment())


class PluggableDeploymentClient(BaseDeploymentClient):
    """Deployments as local server processes, recorded in :func:`state_dir`."""

    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        """Start a server for ``model_uri``; return once it is ready. Fails if ``name`` exists."""
        _check_name(name)
        _check_flavor(flavor)
        config = _parse_config(config)
        with _locked(name):
            if _state_path(name).exists():
                raise DeploymentError(f"deployment '{name}' already exists; update or delete it", RESOURCE_ALREADY_EXISTS)
            state = _start(name, _absolute_uri(model_uri), config, os.getcwd())
            _save(state)
        return self.get_deployment(name)

    def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
        """Serve a new model and/or config under ``name``; return once the new server is ready.

        The new server starts on a new port and the old one is stopped only once the new one
        is ready, so a failed update leaves the deployment as it was. With a fixed ``port`` the
        old server must be stopped first.
        """
        _check_name(name)
        _check_flavor(flavor)
        with _locked(name):
            old = _load(name)
            config = {**old["config"], **_parse_config(config)}
            model_uri = _absolute_uri(model_uri) if model_uri else old["model_uri"]
            if "port" in config:
                _stop(old)
            state = _start(name, model_uri, config, old["cwd"], created=old["created"])
            _stop(old)
            _save(state)
            if state["log"] != old["log"]:
                Path(old["log"]).unlink(missing_ok=True)
                Path(old["conf"]).unlink(missing_ok=True)
        return self.get_deployment(name)

    def delete_deployment(self, name, config=None, endpoint=None):
        """Stop the deployment's server and forget it; nothing to do if there is no such deployment."""
        _check_name(name)
        with _locked(name):
            if not _state_path(name).exists():
                return
            state = _load(name)
            _stop(state)
            for path in (state["log"], state["conf"], _state_path(name)):
                Path(path).unlink(missing_ok=True)

    def list_deployments(self, endpoint=None):
        """Every deployment, as :meth:`get_deployment` describes it."""
        folder = state_dir()
        names = sorted(p.stem for p in folder.glob("*.json") if NAME_PATTERN.fullmatch(p.stem)) if folder.is_dir() else []
        return [self.get_deployment(name) for name in names]

    def get_deployment(self, name, endpoint=None):
        """The deployment's record with its ``status``: ``ready``, ``running`` (not ready yet) or ``dead``."""
        _check_name(name)
        state = _load(name)
        status = "dead"
        if _alive(state):
            status = "ready" if _is_ready(state) else "running"
        return {"name": name, "status": status, "flavor": state["flavor"], "model_uri": state["model_uri"],
                "url": state["url"], "port": state["port"], "pid": state["pid"], "config": state["config"],
                "log": state["log"], "created": state["created"], "updated": state["updated"]}

    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        """Score ``inputs`` (DataFrame, numpy array, dict, list or JSON string) with the deployment's server."""
        import requests

        _check_name(deployment_name)
        state = _load(deployment_name)
        body = _request_body(inputs)
        try:
            response = requests.post(state["url"] + PREDICT_PATH, data=body, headers=_headers(state, "application/json"),
                                     timeout=state["request_timeout"] + 30)
        except requests.RequestException as e:
            raise DeploymentError(f"deployment '{deployment_name}' does not answer ({type(e).__name__}); "
                                  f"its server is {'running' if _alive(state) else 'dead'}, see {state['log']}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200:
            message = answer.get("message") if isinstance(answer, dict) else response.text.strip()[:500]
            raise DeploymentError(f"deployment '{deployment_name}' answered {response.status_code}: {message}")
        if isinstance(answer, dict) and "predictions" in answer:
            return PredictionsResponse(answer)
        return PredictionsResponse({"predictions": answer if answer is not None else response.text})


def _check_name(name):
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise DeploymentError(f"invalid deployment name {name!r}: use 1 to 64 letters, digits, '_' or '-', "
                              "starting with a letter or digit")


def _check_flavor(flavor):
    if flavor not in (None, FLAVOR):
        raise DeploymentError(f"flavor {flavor!r} is not supported by the '{TARGET}' target: "
                              f"leave it out or give {FLAVOR} (the plugin loads the model)")


def _parse_config(config):
    """``-C`` keys as typed values: strings (as MLflow's CLI passes them) are read as YAML, but for text keys."""
    parsed, options = {}, {}
    for key, value in (config or {}).items():
        name = key.removeprefix("option.")
        if key.startswith("option.") and name.isidentifier():
            options[name] = _yaml_value(key, value)
        elif key in SERVER_KEYS:
            parsed[key] = _yaml_value(key, value)
        elif key in DEPLOYMENT_KEYS:
            parsed[key] = value if key == "conf" else _yaml_value(key, value)
        else:
            raise DeploymentError(f"unknown config key '{key}'; known keys: {', '.join([*SERVER_KEYS, *DEPLOYMENT_KEYS])} "
                                  f"(see `mlflow deployments help -t {TARGET}`)")
    if options:
        if not isinstance(parsed.get("plugin_options", {}), dict):
            raise DeploymentError("plugin_options must be a mapping of option names to values")
        parsed["plugin_options"] = {**parsed.get("plugin_options", {}), **options}
    for key in ("plugin", "conf", "auth_token_file"):  # paths: later updates may run from another folder
        if isinstance(parsed.get(key), str) and (key != "plugin" or is_plugin_file(parsed[key])):
            parsed[key] = os.path.abspath(parsed[key])
    return parsed


def _yaml_value(key, value):
    """A ``-C`` value as the server reads an environment variable's: text for text keys, else YAML."""
    if not isinstance(value, str):
        return value
    try:
        return parse_text(key, value)
    except StartupError:
        raise DeploymentError(f"config key '{key}': {value!r} is not valid YAML") from None


def _absolute_uri(model_uri):
    path = local_path(model_uri) if isinstance(model_uri, str) else None
    return os.path.abspath(path) if path else model_uri


def _settings(model_uri, config):
    """The server's validated settings for this model and config."""
    server_config = {k: v for k, v in config.items() if k in FIELDS}
    try:
        settings = build_settings(config.get("conf"), model_uri=model_uri, **server_config)
        check_model_uri(settings.model_uri)  # here, rather than in a server's log
        settings.auth_token()
    except StartupError as e:
        raise DeploymentError(str(e)) from None
    return settings


def _timeout(config):
    timeout = config.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise DeploymentError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return timeout


def _state_path(name):
    return state_dir() / f"{name}.json"


def _load(name):
    try:
        return json.loads(_state_path(name).read_text())
    except FileNotFoundError:
        raise DeploymentError(f"no deployment named '{name}' in {state_dir()}", RESOURCE_DOES_NOT_EXIST) from None


def _save(state):
    path = _state_path(state["name"])
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)  # readers never see half a file


@contextlib.contextmanager
def _locked(name):
    """One change at a time per deployment name, across processes."""
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder / f".{name}.lock"):  # and no lock file left beside the deployments
        yield


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _free_port(host):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _url(host, port):
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server_environment():
    """This environment without the variables that give settings (MLFLOW_PSS_*, PORT): the conf file holds what they
    gave, under the deployment's own keys (its port above all), which they would otherwise override."""
    settings_variables = {env_var(name) for name in FIELDS} | {PORT_ENV}
    return {name: value for name, value in os.environ.items() if name not in settings_variables}


def _write_conf(path, settings):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(settings.as_yaml())


def _start(name, model_uri, config, cwd, created=None):
    """Start a server for the deployment and wait until it is ready; return its state (not yet saved).

    On failure nothing is left: the process group is killed, its files removed, and the
    error carries the last lines of the server's log.
    """
    timeout = _timeout(config)
    settings = _settings(model_uri, {"port": _free_port(config.get("host", "127.0.0.1")), **config})
    folder = state_dir()
    conf, log = folder / f"{name}.{settings.port}.yaml", folder / f"{name}.{settings.port}.log"
    _write_conf(conf, settings)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow_pluggable_scoring_server.webserver", "--conf", str(conf)],
                                env=_server_environment(),
                                cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    now = _now()
    state = {"name": name, "flavor": FLAVOR, "model_uri": model_uri, "config": config, "cwd": cwd,
             "port": settings.port, "url": _url(settings.host, settings.port), "pid": proc.pid,
             "started": _start_time(proc.pid), "conf": str(conf), "log": str(log),
             "request_timeout": settings.request_timeout, "stop_timeout": settings.graceful_timeout + 5,
             "auth": bool(settings.auth_token()), "auth_token_file": settings.auth_token_file, "created": created or now, "updated": now}
    try:
        _wait_ready(state, proc, timeout)
    except BaseException:
        _stop(state)
        conf.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        raise
    return state


def _wait_ready(state, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(f"the server of deployment '{state['name']}' exited with status {proc.returncode}:\n"
                                  + _log_tail(state))
        if _is_ready(state):
            return
        time.sleep(0.3)
    raise DeploymentError(f"the server of deployment '{state['name']}' was not ready after {timeout:g} s "
                          f"(-C timeout=SECONDS waits longer):\n" + _log_tail(state))


def _log_tail(state):
    lines = Path(state["log"]).read_text(errors="replace").splitlines()
    return "\n".join("  " + line for line in lines[-LOG_TAIL_LINES:])


def _headers(state, content_type=None):
    headers = {"Content-Type": content_type} if content_type else {}
    if state["auth"]:
        try:
            headers["Authorization"] = f"Bearer {Settings(auth_token_file=state['auth_token_file']).auth_token()}"
        except StartupError as e:
            raise DeploymentError(f"deployment '{state['name']}': {e}") from None
    return headers


def _is_ready(state):
    import requests

    try:
        return requests.get(state["url"] + READY_PATH, headers=_headers(state), timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _start_time(pid):
    """The process' start time (clock ticks after boot), or None if there is no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (command)"; the command may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(state):
    """Whether the deployment's server process still runs: same pid, same start time."""
    return state["started"] is not None and _start_time(state["pid"]) == state["started"]


def _stop(state):
    """SIGTERM the server's process group, SIGKILL it after ``stop_timeout``; a dead server is left alone."""
    if not _alive(state):
        return
    pid = state["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + state["stop_timeout"]
    while time.monotonic() < deadline and _alive(state):
        with contextlib.suppress(ChildProcessError):  # reap it when this process started it
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _request_body(inputs):
    """``inputs`` as the JSON body MLflow's scoring server takes."""
    if isinstance(inputs, (str, bytes)):
        try:
            json.loads(inputs)
        except ValueError:
            raise DeploymentError("inputs given as a string must be JSON") from None
        return inputs
    if isinstance(inputs, dict) and any(k in inputs for k in MLFLOW_INPUT_KEYS):
        return json.dumps(inputs)
    from mlflow.models.utils import convert_input_example_to_serving_input

    try:
        return convert_input_example_to_serving_input(inputs)
    except Exception as e:
        raise DeploymentError(f"cannot send inputs of type {type(inputs).__name__}: {e}") from None
