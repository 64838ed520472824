"""Graceful shutdown under load, and a dead worker replaced."""

import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import TEST_PLUGINS, WINE, WINE_JSON


def test_sigterm_finishes_every_accepted_request_and_exits_0(sample_models, start_server):
    server = start_server("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", "behaviours.Slow",
                          "--model-uri", WINE / "model", "--workers", "2").wait_workers_ready(2)
    body = json.dumps({**json.loads(WINE_JSON.read_text()), "sleep": 0.5})
    # 8 requests at once to 2 workers: 2 in hand, 6 waiting in the listen backlog.
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(server.predict, body) for _ in range(8)]
        time.sleep(0.3)
        os.kill(server.proc.pid, signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 8
    assert all(len(r.json()) == 3 for r in responses)
    assert server.proc.wait(timeout=60) == 0
    with socket.socket() as s:  # and then it no longer listens
        assert s.connect_ex(("127.0.0.1", server.port)) != 0


def test_a_killed_worker_is_replaced(sample_models, start_server):
    server = start_server("--conf", WINE / "conf.yaml")
    victim = requests.get(server.url + "/api/status").json()["system"]["pid"]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            status = requests.get(server.url + "/api/health/ready", timeout=5)
            if status.status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    assert requests.get(server.url + "/api/status").json()["system"]["pid"] != victim
    assert server.predict(WINE_JSON.read_bytes()).status_code == 200
    assert server.proc.poll() is None
