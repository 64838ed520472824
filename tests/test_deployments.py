"""The MLflow deployments target `pluggable`, driven by MLflow's own CLI and `get_deploy_client`, with real servers.

Marked slow but for the client's create-get-predict and its failures: each MLflow CLI call imports MLflow afresh.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.deployments import PredictionsResponse, get_deploy_client
from mlflow.exceptions import MlflowException

from conftest import ROOT, TEST_PLUGINS, WINE, WINE_JSON, free_port

from mlflow_pluggable_scoring_server.deployments import STATE_DIR_VAR

CLI_TIMEOUT = 600  # the CLI imports MLflow, then waits for the server: slow on 2 busy cores


@pytest.fixture
def rows():
    """The three sample wines, without the quality column."""
    doc = json.loads(WINE_JSON.read_text())
    return pd.DataFrame(doc["data"], columns=doc["columns"]).drop(columns="quality")


@pytest.fixture(scope="module")
def expected(sample_models):
    """What the wine model itself predicts for the three wines, without any server."""
    import mlflow.pyfunc

    doc = json.loads(WINE_JSON.read_text())
    frame = pd.DataFrame(doc["data"], columns=doc["columns"]).drop(columns="quality")
    return np.asarray(mlflow.pyfunc.load_model(str(sample_models["wine"])).predict(frame.astype("float32")))


@pytest.fixture
def state(tmp_path, monkeypatch, sample_models):
    """A state folder of this test's own; every deployment in it is deleted at the end, and its processes checked gone."""
    folder = tmp_path / "deployments"
    monkeypatch.setenv(STATE_DIR_VAR, str(folder))
    yield folder
    records = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    for record in records:
        get_deploy_client("pluggable").delete_deployment(record["name"])
    for record in records:
        assert not group_members(record["pid"]), f"processes of {record['name']} left running"
    assert not list(folder.glob("*.json")) and not list(folder.glob("*.log"))


@pytest.fixture
def client(state):
    return get_deploy_client("pluggable")


def group_members(pgid):
    """The live processes of a process group (a server and its workers), read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def mlflow_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "mlflow", "deployments", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=CLI_TIMEOUT)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def readme_cli(command):
    """A README command (`mlflow deployments ...`), run as the user runs it, with the venv's `mlflow` first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, env=env, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_cli_workflow_as_the_readme_runs_it(state, expected):
    """The README's `mlflow deployments` commands, in order, each checked for what it must have done."""
    from test_readme import readme_commands

    create, listing, get, predict, update, predict_again, delete = readme_commands("deployments")
    assert "python_function deployment wine is created" in readme_cli(create)
    listed = readme_cli(listing)
    assert "'name': 'wine'" in listed and "'status': 'ready'" in listed
    got = dict(line.split(": ", 1) for line in readme_cli(get).splitlines() if ": " in line)
    assert got["status"] == "ready" and got["model_uri"] == str(WINE / "model")
    assert requests.get(got["url"] + "/api/health/ready", timeout=5).status_code == 200
    assert np.allclose(json.loads(readme_cli(predict))["predictions"], expected, rtol=1e-6)

    assert "is updated" in readme_cli(update)
    updated = get_deploy_client("pluggable").get_deployment("wine")
    assert updated["status"] == "ready" and updated["port"] != int(got["port"])
    assert updated["config"] == {"workers": 2, "plugin": str(WINE / "plugin.py")}
    assert not group_members(int(got["pid"])), "the old server still runs after the update"
    # The sample plugin answers a bare list; the target wraps it as MLflow's {"predictions": ...}.
    assert np.allclose(json.loads(readme_cli(predict_again))["predictions"], expected, rtol=1e-6)
    status = requests.get(updated["url"] + "/api/status", timeout=5).json()
    assert status["plugin"]["file"] == str(WINE / "plugin.py")

    assert "Deployment wine is deleted" in readme_cli(delete)
    assert not group_members(updated["pid"])
    assert "Deployment wine is deleted" in readme_cli(delete)  # idempotent
    assert "List of all deployments:\n[]" in readme_cli(listing)


@pytest.mark.slow
def test_cli_errors_are_one_line(state):
    proc = mlflow_cli("create", "-t", "pluggable", "--name", "wine", "-m", "plugin_samples/sklearn_wine/model",
                      "-C", "wokers=2", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: unknown config key 'wokers'; known keys: host, port,")
    help_text = mlflow_cli("help", "-t", "pluggable").stdout
    for key in ("plugin ", "plugin_options", "option.NAME", "workers", "request_timeout", "env_manager", "conf", "timeout"):
        assert f"\n  {key}" in help_text, key


def test_client_create_get_predict(client, state, rows, expected, monkeypatch):
    # A PORT (or MLFLOW_PSS_PORT) here, as a container platform sets, is not the deployment's port: it keeps its own.
    monkeypatch.setenv("PORT", str(free_port()))
    created = client.create_deployment("wine", str(WINE / "model"), config={"workers": "1", "request_timeout": "30"})
    assert created["name"] == "wine" and created["flavor"] == "python_function" and created["status"] == "ready"
    assert created["url"] == f"http://127.0.0.1:{created['port']}"
    assert group_members(created["pid"]), "no server process"

    answer = client.predict("wine", rows)
    assert isinstance(answer, PredictionsResponse)
    assert np.allclose(answer.get_predictions(predictions_format="ndarray"), expected, rtol=1e-6)
    split = {"dataframe_split": rows.to_dict(orient="split")}
    for inputs in (split, json.dumps(split), rows.to_dict(orient="list")):
        assert np.allclose(client.predict("wine", inputs)["predictions"], expected, rtol=1e-6)

    with pytest.raises(MlflowException, match=r"(?s)deployment 'wine' answered 400: .*Model is missing inputs \['alcohol'\]"):
        client.predict("wine", rows.drop(columns="alcohol"))
    with pytest.raises(MlflowException, match="already exists"):
        client.create_deployment("wine", str(WINE / "model"))
    assert [d["name"] for d in client.list_deployments()] == ["wine"]

    client.delete_deployment("wine")
    assert list(state.iterdir()) == []  # no lock file either


@pytest.mark.slow
def test_plugin_file_with_options(client, rows, expected):
    client.create_deployment("scaled", str(WINE / "model"),
                             config={"plugin": str(TEST_PLUGINS / "scaled_wine.py"), "option.scale": "2"})
    assert np.allclose(client.predict("scaled", rows)["predictions"], expected * 2, rtol=1e-6)
    client.update_deployment("scaled", config={"option.scale": "0.5"})
    assert client.get_deployment("scaled")["config"]["plugin_options"] == {"scale": 0.5}
    assert np.allclose(client.predict("scaled", rows)["predictions"], expected / 2, rtol=1e-6)


@pytest.mark.slow
def test_model_from_the_registry(client, registry, monkeypatch, rows, expected):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["env"]["MLFLOW_TRACKING_URI"])
    deployment = client.create_deployment("registered", "models:/sklearn_wine@champion")
    assert deployment["model_uri"] == "models:/sklearn_wine@champion"
    assert np.allclose(client.predict("registered", rows)["predictions"], expected, rtol=1e-6)


@pytest.mark.parametrize("name, uri, flavor, config, message", [
    ("wine", "no/such/model", None, {}, "model URI '.*no/such/model' does not resolve"),
    ("wine", str(WINE / "model"), None, {"wokers": "2"}, "unknown config key 'wokers'"),
    ("wine", str(WINE / "model"), None, {"workers": "two"}, "workers: Input should be a valid integer"),
    ("wine", str(WINE / "model"), None, {"plugin_options": "[1"}, "config key 'plugin_options': '\\[1' is not valid YAML"),
    ("wine", str(WINE / "model"), "sklearn", {}, "flavor 'sklearn' is not supported"),
    ("../wine", str(WINE / "model"), None, {}, "invalid deployment name '../wine'"),
    ("wine", str(WINE / "model"), None, {"plugin": str(TEST_PLUGINS / "behaviours.py"), "plugin_class": "BadLoad"},
     "(?s)exited with status .*this plugin cannot read that model"),
])
def test_create_failures_leave_nothing(client, state, name, uri, flavor, config, message):
    with pytest.raises(MlflowException, match=message) as failure:
        client.create_deployment(name, uri, flavor, config=config)
    assert "Traceback" not in failure.value.message
    assert not state.exists() or list(state.iterdir()) == []  # no lock file either
    assert client.list_deployments() == []


@pytest.mark.slow
def test_dead_server_is_reported_and_can_be_updated(client, rows, expected):
    first = client.create_deployment("wine", str(WINE / "model"))
    with pytest.raises(MlflowException, match="(?s)exited with status .*this plugin cannot read that model"):
        client.update_deployment("wine", config={"plugin": str(TEST_PLUGINS / "behaviours.py"), "plugin_class": "BadLoad"})
    assert client.get_deployment("wine")["pid"] == first["pid"] and client.get_deployment("wine")["status"] == "ready"

    os.killpg(first["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while client.get_deployment("wine")["status"] != "dead":
        assert time.monotonic() < deadline, "a killed server is not reported dead"
        time.sleep(0.2)
    with pytest.raises(MlflowException, match="does not answer .* its server is dead"):
        client.predict("wine", rows)

    revived = client.update_deployment("wine")
    assert revived["status"] == "ready" and revived["pid"] != first["pid"]
    assert np.allclose(client.predict("wine", rows)["predictions"], expected, rtol=1e-6)


@pytest.mark.slow
def test_run_local(state, rows, expected, tmp_path):
    port = free_port()
    log = open(tmp_path / "run-local.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "deployments", "run-local", "-t", "pluggable", "--name", "local",
                             "-m", "plugin_samples/sklearn_wine/model", "-C", f"port={port}"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while True:
            assert proc.poll() is None, (tmp_path / "run-local.log").read_text()
            assert time.monotonic() < deadline, "run-local never became ready"
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/health/ready", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or its worker still loading
                pass
            time.sleep(0.5)
        body = json.dumps({"dataframe_split": rows.to_dict(orient="split")})
        r = requests.post(f"http://127.0.0.1:{port}/api/predict", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and np.allclose(r.json()["predictions"], expected, rtol=1e-6)
        assert get_deploy_client("pluggable").list_deployments() == []  # run-local is not a managed deployment
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # the server itself: run-local execs it
        assert proc.wait(timeout=60) == 0
        log.close()
    assert not group_members(proc.pid)


@pytest.mark.slow
def test_the_readmes_client_example_runs(state, expected):
    """The README's Python client example, as it is, in a process of its own (the state folder from the fixture)."""
    source = re.search(r"```python\n(from mlflow\.deployments import get_deploy_client\n.*?)```",
                       (ROOT / "README.md").read_text(), re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, cwd=ROOT, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    predictions, status = proc.stdout.splitlines()[-2:]
    assert np.allclose(json.loads(predictions), expected)
    assert status == "ready"
    assert not list(state.glob("*.json"))  # the example deletes what it created
