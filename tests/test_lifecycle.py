"""A server's life as a load balancer and an orchestrator see it: real server processes on 127.0.0.1.

Readiness with several workers, a worker killed under load, SIGTERM under steady load, a killed
master, a plugin's import-time state, health beside slow predictions, a 2020 plugin served unchanged.
Every test is bounded in requests and in time. (Slow clients and broken HTTP: test_serving.py.)
"""

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import TEST_PLUGINS, TWO_CPUS, WINE, WINE_JSON

BODY = WINE_JSON.read_bytes()


def test_no_prediction_meets_a_loading_worker(start_server, tmp_path):
    """Two workers, the second slow to load: once /ping said 200, no 503; a worker killed under load fails
    at most the requests it held, and its replacement takes no traffic while it loads."""
    server = start_server("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", "behaviours.StaggeredLoad",
                          "--plugin-option", f"marker={tmp_path / 'first'}", "--model-uri", WINE / "model",
                          "--workers", "2", wait=False)
    server.wait_ready(path="/ping")
    statuses = [server.predict(BODY).status_code for _ in range(50)]
    assert statuses == [200] * 50, statuses
    server.wait_workers_ready(2)

    outcomes, stop = [], threading.Event()

    def load():
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    outcomes.append(session.post(server.url + "/api/predict", data=BODY,
                                                 headers={"Content-Type": "application/json"}, timeout=30).status_code)
                except requests.RequestException as e:
                    outcomes.append(type(e).__name__)

    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(load)
        time.sleep(1)
        victim = server.get("/api/status").json()["system"]["pid"]
        os.kill(victim, signal.SIGKILL)
        time.sleep(5)  # the replacement loads for 3 s meanwhile
        stop.set()
    failed = [o for o in outcomes if o != 200]
    print(f"{len(outcomes)} requests, {len(failed)} failed: {failed}")
    assert 503 not in failed
    assert len(failed) <= 4, failed  # at most one in flight per client thread
    assert len(outcomes) > 60
    server.wait_workers_ready(3)  # the replacement has loaded
    assert server.alive()


def test_sigterm_under_steady_load_answers_all_it_accepted(start_server):
    server = start_server("--conf", WINE / "conf.yaml")
    outcomes, answered = [], []

    def client():
        while True:
            try:  # a new connection each time: some are in the backlog when SIGTERM comes
                r = requests.post(server.url + "/api/predict", data=BODY, headers={"Content-Type": "application/json"},
                                  timeout=30)
                outcomes.append(r.status_code)
                answered.append(time.monotonic())
            except requests.ConnectionError as e:
                refused = isinstance(e.__context__, ConnectionRefusedError) or "Connection refused" in str(e)
                outcomes.append("refused" if refused else f"lost: {e}")
                return

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(client)
        time.sleep(1.5)
        os.kill(server.proc.pid, signal.SIGTERM)
        sent = time.monotonic()
    assert server.proc.wait(timeout=30) == 0
    exited = time.monotonic()
    lost = [o for o in outcomes if isinstance(o, str) and o != "refused"]
    print(f"{outcomes.count(200)} answered, {outcomes.count('refused')} refused after SIGTERM, "
          f"exit {exited - sent:.2f} s after SIGTERM, {exited - max(answered):.2f} s after the last answer")
    assert not lost, outcomes
    assert set(outcomes) <= {200, "refused"} and outcomes.count("refused") == 8, outcomes
    assert exited - max(answered) < 5  # about 1 s on an idle machine; CI's 2 cores run 3 test processes


def metrics_folder_of(pid):
    """The prometheus samples folder holding a worker's files."""
    for folder in Path("/tmp").glob("mlflow-pss-metrics-*"):
        if any(f.name.endswith(f"_{pid}.db") for f in folder.iterdir()):
            return folder
    return None


def test_workers_exit_with_their_master(start_server):
    server = start_server("--conf", WINE / "conf.yaml", "--workers", "2").wait_workers_ready(2)
    with open(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children") as f:
        workers = [int(pid) for pid in f.read().split()]
    assert len(workers) == 2
    for _ in range(10):
        assert server.predict(BODY).status_code == 200
    folder = metrics_folder_of(server.get("/api/status").json()["system"]["pid"])
    assert folder is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
              for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their master"
        time.sleep(0.1)
    assert not folder.exists(), "the metrics folder was left behind"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0


def answers_of_both_workers(server):
    """At least 40 answers of a 2-worker server to BODY, until both workers have answered (at most 400): the kernel
    may hand a busy machine's connections to one worker many times in a row."""
    answers = []
    while len(answers) < 400 and (len(answers) < 40 or len({a["pid"] for a in answers}) < 2):
        answers.append(server.predict(BODY).json())
    return answers


def test_plugin_import_state_belongs_to_its_worker(start_server):
    """The master never imports the plugin: each worker imports it (a Spark session made at import is the worker's)."""
    server = start_server("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", "behaviours.ImportPid",
                          "--model-uri", WINE / "model", "--workers", "2").wait_workers_ready(2)
    answers = answers_of_both_workers(server)
    assert all(a["imported_in"] == a["pid"] for a in answers), answers
    assert len({a["pid"] for a in answers}) == 2


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_a_fork_safe_model_is_loaded_once_by_the_master(start_server, preload):
    """A local model whose plugin says it is fork-safe is loaded by the master and shared by the workers
    (``preload``, on by default); with ``--no-preload`` each worker loads its own."""
    server = start_server("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", "behaviours.LoadPid",
                          "--model-uri", WINE / "model", "--workers", "2", *([] if preload else ["--no-preload"]))
    server.wait_workers_ready(2)
    answers = answers_of_both_workers(server)
    assert len({a["pid"] for a in answers}) == 2
    assert all(a["loaded_in"] == (server.proc.pid if preload else a["pid"]) for a in answers), answers
    assert (f"loaded {WINE / 'model'} before forking the workers: the 2 workers share it" in server.log()) == preload


def threads_cpus(pid):
    """The CPUs each thread of process ``pid`` may run on, its main thread first."""
    tids = sorted(os.listdir(f"/proc/{pid}/task"), key=lambda tid: tid != str(pid))
    return [os.sched_getaffinity(int(tid)) for tid in tids]


@TWO_CPUS
@pytest.mark.parametrize("pinned", [True, False], ids=["cpu-affinity", "no-cpu-affinity"])
def test_each_workers_python_threads_run_on_a_cpu_of_its_own(start_server, pinned):
    """Two workers batching the forest: each keeps its main thread and its batcher on one CPU, not the other's
    (``cpu_affinity``, on by default); with ``--no-cpu-affinity`` the kernel may run them anywhere."""
    server = start_server("--conf", WINE / "conf.yaml", "--workers", "2", "--max-batch-size", "8",
                          *([] if pinned else ["--no-cpu-affinity"]))
    server.wait_workers_ready(2)
    with ThreadPoolExecutor(4) as pool:  # batched answers, and reader threads started
        assert {r.status_code for r in pool.map(lambda _: server.predict(BODY), range(40))} == {200}
    everything = os.sched_getaffinity(server.proc.pid)
    workers = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    assert len(workers) == 2
    mains = []
    for pid in workers:
        cpus = threads_cpus(pid)
        mains.append(cpus[0])
        if pinned:
            assert len(cpus[0]) == 1 and sum(c == cpus[0] for c in cpus) >= 3, cpus  # main, batcher, readers
        else:
            assert all(c == everything for c in cpus), cpus
    assert (mains[0] != mains[1]) == pinned, mains
    assert threads_cpus(server.proc.pid)[0] == everything  # never the master


def test_health_answers_while_a_slow_model_predicts(start_server):
    """Quick predictions are answered on the worker's main thread; slow ones never are, so health
    checks and other connections are answered meanwhile."""
    server = start_server("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", "behaviours.Slow",
                          "--model-uri", WINE / "model")
    slow_body = json.dumps({**json.loads(BODY), "sleep": 0.5})
    stop = threading.Event()

    def predict_slowly():
        with requests.Session() as session:  # keep-alive, as wrk and load balancers do
            while not stop.is_set():
                started = time.monotonic()
                assert session.post(server.url + "/api/predict", data=slow_body,
                                    headers={"Content-Type": "application/json"}, timeout=30).status_code == 200
                assert time.monotonic() - started >= 0.45

    with ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(predict_slowly) for _ in range(2)]
        time.sleep(1)
        waits = []
        for _ in range(10):
            started = time.monotonic()
            assert server.get("/api/health/live").status_code == 200
            waits.append(time.monotonic() - started)
            time.sleep(0.1)
        stop.set()
        for future in busy:
            future.result()
    print(f"liveness answered in {max(waits) * 1000:.0f} ms at most beside 0.5 s predictions")
    assert max(waits) < 0.3, waits


def test_a_2020_plugin_is_served_unchanged(start_server):
    """tests/plugins/legacy_wine.py calls pd.read_json on the decoded body, as the 2020 samples did: with
    pandas 3 too, each worker answers what the sample plugin answers."""
    server = start_server("--plugin-file", TEST_PLUGINS / "legacy_wine.py", "--model-uri", WINE / "model",
                          "--workers", "2").wait_workers_ready(2)
    answers = [server.predict(BODY) for _ in range(6)]
    assert all(r.status_code == 200 for r in answers), answers[0].text
    assert all(r.json() == pytest.approx([5.89, 5.92, 5.95], abs=0.005) for r in answers)
