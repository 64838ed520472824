"""Start-up: flags, conf files, and one clear line for every way start-up can fail.

Failures that come before serving run ``main(argv)`` in-process; a model that fails to load in
a worker, the console script and the worker processes need real processes.
"""

import time

import pytest
import yaml

from conftest import ROOT, TEST_PLUGINS, WINE, WINE_JSON, run_cli, serve_main


def assert_one_line_failure(proc, message):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert message in errors[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--plugin-file", "nope/plugin.py", "--model-uri", WINE / "model"], "plugin file 'nope/plugin.py' does not exist"),
        (["--plugin-file", TEST_PLUGINS / "third_party.py", "--plugin-class", "plugin.Missing", "--model-uri", WINE / "model"],
         "plugin class 'plugin.Missing' not found"),
        (["--plugin-file", TEST_PLUGINS / "not_plugins.py", "--model-uri", WINE / "model"], "is not a plugin"),
        (["--plugin-file", TEST_PLUGINS / "third_party.py", "--model-uri", "no/such/model"],
         "model URI 'no/such/model' does not resolve"),
        (["--plugin-file", TEST_PLUGINS / "third_party.py", "--model-uri", "file:///no/such/model"], "does not resolve"),
        (["--plugin-file", TEST_PLUGINS / "third_party.py"], "no model: give --model-uri"),
        (["--plugin", "no_such_plugin", "--model-uri", WINE / "model"], "no installed plugin named 'no_such_plugin'"),
        (["--plugin-file", TEST_PLUGINS / "third_party.py", "--plugin-option", "size=28", "--model-uri", WINE / "model"],
         "cannot be used: TypeError"),
        (["--conf", "no/such/conf.yaml"], "cannot read conf file 'no/such/conf.yaml'"),
        (["--plugin-file", TEST_PLUGINS / "third_party.py", "--model-uri", WINE / "model", "--workers", "0"],
         "workers: Input should be greater than or equal to 1"),
        (["--plugin-file", TEST_PLUGINS / "third_party.py", "--model-uri", WINE / "model", "--packages", "surely-no-such-package-xyz==0.0.1"],
         "surely-no-such-package-xyz==0.0.1 could not be installed for Python"),
    ],
)
def test_startup_failures_say_one_line(sample_models, args, message):
    assert_one_line_failure(serve_main(*args), message)


def test_plugin_options_must_be_key_value():
    proc = serve_main("--plugin-option", "size", "--model-uri", WINE / "model")
    assert proc.returncode == 2 and "--plugin-option: expected KEY=VALUE, not 'size'" in proc.stderr


@pytest.mark.parametrize(
    "conf, message",
    [
        ("port: [5005\n", "is not valid YAML at line"),
        ("- a\n- b\n", "must be a mapping"),
        ("plugn: x.py\n", "unknown key(s) plugn"),
        ("port: high\n", "port (from conf file '{path}'): Input should be a valid integer"),
        ("logging: {level: LOUD}\nplugin: x\nmodel_uri: y\n", "logging.level (from conf file '{path}'): should be one of DEBUG"),
        # Values of the wrong type or out of bounds, each named with where it came from.
        ("model_uri: 5\n", "model_uri (from conf file '{path}'): Input should be a valid string"),
        ("model_uri: m\nplugin_class: 5\n", "plugin_class (from conf file '{path}'): Input should be a valid string"),
        ("model_uri: m\nhost: [1, 2]\n", "host (from conf file '{path}'): Input should be a valid string"),
        ("model_uri: m\nworkers: true\n", "workers (from conf file '{path}'): Input should be a number"),
        ("model_uri: m\nport: 70000\n", "port (from conf file '{path}'): Input should be less than or equal to 65535"),
        ("model_uri: m\npublic_endpoints: [admin]\n", "public_endpoints.0 (from conf file '{path}'): Input should be 'health'"),
        ("model_uri: m\nplugin_options: {1: a}\n", "plugin_options.1.[key] (from conf file '{path}'): Input should be a valid string"),
        ("model_uri: m\nlogging: {colour: red}\n", "logging.colour (from conf file '{path}'): Extra inputs are not permitted"),
    ],
)
def test_bad_conf_files(tmp_path, conf, message):
    path = tmp_path / "conf.yaml"
    path.write_text(conf)
    proc = serve_main("--conf", path)
    assert proc.returncode == 2
    assert_one_line_failure(proc, message.format(path=path))


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--port", "high"], {}, "error: port: Input should be a valid integer"),
        (["--request-timeout", "-1"], {}, "error: request_timeout: Input should be greater than 0"),
        ([], {"MLFLOW_PSS_WORKERS": "two"}, "error: workers (from environment variable MLFLOW_PSS_WORKERS): Input should be a valid integer"),
        ([], {"MLFLOW_PSS_LOGGING": "{level: [x"}, "error: environment variable MLFLOW_PSS_LOGGING: logging: the value is not valid YAML"),
        ([], {"MLFLOW_PSS_PUBLIC_ENDPOINTS": "health,admin"},
         "error: public_endpoints.1 (from environment variable MLFLOW_PSS_PUBLIC_ENDPOINTS): Input should be 'health'"),
        ([], {"PORT": "http"}, "error: port (from environment variable PORT): Input should be a valid integer"),
    ],
)
def test_bad_flags_and_environment_variables(args, env, message):
    proc = serve_main("--model-uri", WINE / "model", *args, env=env)
    assert proc.returncode == 2
    assert_one_line_failure(proc, message)


def test_flags_override_the_environment_which_overrides_the_conf_file(tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("model_uri: m\nport: 5010\nworkers: 3\nhost: 0.0.0.0\npackages: [a]\n")
    env = {"MLFLOW_PSS_PORT": "5011", "MLFLOW_PSS_WORKERS": "2", "MLFLOW_PSS_PACKAGES": "b, c",
           "MLFLOW_PSS_LOGGING": "{level: debug}", "MLFLOW_PSS_INSTALL_MODEL_REQUIREMENTS": "true"}
    proc = serve_main("--conf", conf, "--port", "5012", "--print-settings", env=env)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert (printed["port"], printed["workers"], printed["host"]) == (5012, 2, "0.0.0.0")
    assert printed["packages"] == ["b", "c"] and printed["install_model_requirements"] is True
    assert printed["logging"]["level"] == "DEBUG"
    # What --print-settings prints is a conf file that gives the same settings.
    again = tmp_path / "again.yaml"
    again.write_text(proc.stdout)
    assert yaml.safe_load(serve_main("--conf", again, "--print-settings").stdout) == printed


def test_port_given_by_a_container_platform(tmp_path):
    """PORT (KServe, Cloud Run and Knative set it) overrides the conf file's port; MLFLOW_PSS_PORT and --port override it."""
    conf = tmp_path / "conf.yaml"
    conf.write_text("model_uri: m\nport: 5010\n")

    def port(*args, **env):
        proc = serve_main("--conf", conf, *args, "--print-settings", env=env)
        assert proc.returncode == 0, proc.stderr
        return yaml.safe_load(proc.stdout)["port"]

    assert port(PORT="8080") == 8080
    assert port(PORT="8080", MLFLOW_PSS_PORT="5011") == 5011
    assert port("--port", "5012", PORT="8080") == 5012


def test_the_readme_table_is_the_settings():
    """The README's table of flags and conf keys is made from the settings' fields and serve's parser."""
    from mlflow_pluggable_scoring_server.config import reference_table
    from mlflow_pluggable_scoring_server.webserver import argument_parser

    assert reference_table(argument_parser()) in (ROOT / "README.md").read_text(), "run scripts/settings_table.py"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("models:/no_such_model/1", "does not resolve"),
        ("models:/no_such_model@champion", "does not resolve"),
        ("runs:/0123456789abcdef0123456789abcdef/model", "does not resolve"),
    ],
)
def test_registry_uris_that_do_not_resolve(tmp_path, uri, message):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = serve_main("--plugin-file", TEST_PLUGINS / "third_party.py", "--model-uri", uri, env=env)
    assert_one_line_failure(proc, message)


def test_model_the_plugin_cannot_load_stops_the_server(sample_models):
    proc = run_cli("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", "behaviours.BadLoad",
                   "--model-uri", WINE / "model")
    assert proc.returncode != 0
    assert "error: plugin BadLoad cannot load model" in proc.stderr
    assert "this plugin cannot read that model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_flags_and_conf_file_serve_the_same(make_app):
    by_conf = make_app("--conf", WINE / "conf.yaml")
    by_flags = make_app("--host", "127.0.0.1", "--plugin-file", WINE / "plugin.py", "--plugin-class", "plugin.Plugin",
                        "--model-uri", WINE / "model", "--packages", "pyyaml,numpy", "--env-manager", "local")
    assert by_flags.settings.packages == ["pyyaml", "numpy"] and by_flags.settings.env_manager == "local"
    body = WINE_JSON.read_bytes()
    assert by_conf.predict(body).json() == by_flags.predict(body).json()
    for server in (by_conf, by_flags):
        status = server.get("/api/status").json()
        assert status["plugin"]["file"].endswith("sklearn_wine/plugin.py")
        assert status["model"]["uri"].endswith("sklearn_wine/model")


def test_flags_override_the_conf_file(tmp_path, make_app):
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"plugin: {TEST_PLUGINS / 'does_not_exist.py'}\n"
        f"model_uri: {WINE / 'model'}\n"
        "logging: {level: DEBUG}\n"
        "workers: 3\n"
    )
    server = make_app("--conf", conf, "--plugin-file", WINE / "plugin.py", "--workers", "1")
    status = server.get("/api/status").json()
    assert status["plugin"]["file"].endswith("sklearn_wine/plugin.py")
    assert status["server"]["workers"] == 1
    assert server.settings.log_level == "DEBUG"  # a process logs at it (see test_conf_logging_level_applies)
    assert status["system"]["current_dir"] == str(ROOT)


def test_conf_logging_level_applies(tmp_path, start_server):
    """A server process logs at the conf file's level: DEBUG logs every request."""
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"plugin: {WINE / 'plugin.py'}\nmodel_uri: {WINE / 'model'}\nlogging: {{level: DEBUG}}\n")
    server = start_server("--conf", conf)
    assert server.get("/api/status").json()["system"]["current_logging_level"] == "DEBUG"
    assert server.predict(WINE_JSON.read_bytes()).status_code == 200
    deadline = time.monotonic() + 10  # the access line is written after the answer
    while '"POST /api/predict HTTP/1.1" 200' not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)


def test_console_script_is_installed(sample_models):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "mlflow-pluggable-scoring-server"
    assert script.exists() or shutil.which("mlflow-pluggable-scoring-server")
    proc = subprocess.run([str(script), "--plugin-file", "nope.py", "--model-uri", str(WINE / "model")], capture_output=True, text=True)
    assert_one_line_failure(proc, "plugin file 'nope.py' does not exist")
    for args in (["--version"], ["serve", "--version"]):
        version = subprocess.run([str(script), *args], capture_output=True, text=True)
        assert version.returncode == 0 and "mlflow-pluggable-scoring-server" in version.stdout
    commands = subprocess.run([str(script), "commands"], capture_output=True, text=True)
    assert commands.returncode == 0 and "serve " in commands.stdout


def test_workers_flag_starts_that_many_worker_processes(two_workers):
    with open(f"/proc/{two_workers.proc.pid}/task/{two_workers.proc.pid}/children") as f:
        children = f.read().split()
    assert len(children) == 2
    pids = {two_workers.get("/api/status").json()["system"]["pid"] for _ in range(20)}
    assert pids <= {int(c) for c in children}
