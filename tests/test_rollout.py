"""Following the Model Registry: `models:/roll@champion` served under steady load while the alias moves.

A sqlite registry holds four versions of a model that answers a constant: 1.0, 2.0, one whose
predictions fail (its example cannot be scored) and one that cannot be loaded. Two workers poll
every POLL seconds; four clients score all along. No request may fail, the answers must follow
the alias, and the two broken versions must never be switched to.
"""

import json
import threading
import time

import pytest

from conftest import ROOT

POLL = 1.0
LOAD_SLACK = 3.0  # seconds for a worker to load the new version and score its example
BODY = json.dumps({"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}).encode()


@pytest.fixture(scope="module")
def roll(tmp_path_factory):
    """The registry (its tracking URI) and a function moving the alias ``champion`` of model ``roll``."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    uri = f"sqlite:///{tmp_path_factory.mktemp('registry')}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        signature = infer_signature(pd.DataFrame({"x": [1.0]}), pd.Series([1.0]))
        for value in (1.0, 2.0, "boom", "unloadable"):
            mlflow.pyfunc.log_model(name="model", python_model=str(ROOT / "tests" / "models" / "constant_model.py"),
                                    model_config={"value": value}, registered_model_name="roll", signature=signature,
                                    input_example=pd.DataFrame({"x": [1.0]}), pip_requirements=["mlflow"])
        client = MlflowClient(uri)
        client.set_registered_model_alias("roll", "champion", "1")
    finally:
        mlflow.set_tracking_uri(None)
    return uri, lambda version: client.set_registered_model_alias("roll", "champion", str(version))


class Clients:
    """Four clients scoring all along; every answer kept with its time."""

    def __init__(self, server, count=4):
        self.server, self.answers, self.failures = server, [], []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def run(self):
        while not self.stopping.is_set():
            try:
                r = self.server.predict(BODY, path="/invocations")
                if r.status_code == 200:
                    self.answers.append((time.monotonic(), r.json()["predictions"][0]))
                else:
                    self.failures.append(r.status_code)
            except Exception as e:  # a reset connection is a failure too
                self.failures.append(repr(e))

    def last(self, value):
        return max((t for t, v in self.answers if v == value), default=None)

    def wait_for(self, value, timeout):
        """Wait until the answers are ``value`` (and stay so a moment); the time the other answers stopped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = [v for t, v in self.answers if t > time.monotonic() - 0.5]
            if recent and all(v == value for v in recent):
                return max((t for t, v in self.answers if v != value), default=0)
            time.sleep(0.1)
        raise AssertionError(f"answers did not become {value} in {timeout} s: {self.answers[-10:]}")

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)


@pytest.mark.slow
def test_answers_follow_the_alias_with_no_failed_request(roll, start_server):
    uri, move = roll
    server = start_server("--model-uri", "models:/roll@champion", "--registry-poll-seconds", POLL, "--workers", 2,
                          env={"MLFLOW_TRACKING_URI": uri})
    clients = Clients(server)
    try:
        clients.wait_for(1.0, 10)
        for version, value in ((2, 2.0), (1, 1.0)):
            moved = time.monotonic()
            move(version)
            last_old = clients.wait_for(value, 2 * POLL + LOAD_SLACK + 10)
            assert last_old - moved <= 2 * POLL + LOAD_SLACK, f"the old answers went on {last_old - moved:.1f} s"
            for _ in range(4):  # each worker's API document and V2 metadata name the version it now serves
                spec = server.get("/api/swagger").json()
                documented = spec["paths"]["/v2/models/roll"]["get"]["responses"]["200"]["content"]["application/json"]
                assert documented["example"]["versions"] == [str(version)]
                assert server.get("/v2/models/roll").json()["versions"] == [str(version)]
        # Versions that cannot score their example or cannot be loaded are never switched to.
        for broken in (3, 4):
            move(broken)
            time.sleep(3 * POLL + LOAD_SLACK)
            assert {v for t, v in clients.answers if t > time.monotonic() - POLL} == {1.0}
            status = server.get("/api/status").json()["models"][0]
            assert f"version {broken} was not switched to" in status["rollout_error"], status
            assert status["version"] == "1"
        failures = [line for line in server.get("/metrics").text.splitlines()
                    if line.startswith("scoring_rollout_failures_total{")]
        assert failures and float(failures[0].split()[-1]) >= 2, failures
    finally:
        clients.stop()
    assert not clients.failures, clients.failures[:10]
    assert len(clients.answers) > 100
    log = server.log()
    assert "now serving version 2 (was 1)" in log and "now serving version 1 (was 2)" in log
    assert "Traceback" not in log.split("version 3")[0]  # the broken versions' tracebacks come after
