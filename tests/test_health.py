"""Liveness and readiness; predictions refused with 503 until the model is loaded."""

import time

import requests

from conftest import TEST_PLUGINS, WINE, WINE_JSON


def test_ready_only_once_the_model_is_loaded(sample_models, start_server):
    server = start_server("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", "behaviours.SlowLoad",
                          "--model-uri", WINE / "model", wait=False)
    deadline = time.monotonic() + 60
    while True:  # the worker answers as soon as it is up, long before the model is loaded
        try:
            live = requests.get(server.url + "/api/health/live", timeout=5)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    ready = requests.get(server.url + "/api/health/ready", timeout=5)
    assert ready.status_code == 503 and ready.json()["error_code"] == "SERVICE_UNAVAILABLE"
    early = server.predict(WINE_JSON.read_bytes())
    assert early.status_code == 503 and early.json() == {
        "error_code": "SERVICE_UNAVAILABLE", "message": "the model is still loading; retry shortly"}
    assert requests.get(server.url + "/api/status").json()["model"]["ready"] is False
    for path in ("/ping", "/health"):  # MLflow's health checks: load balancers wait for a 200
        ping = requests.get(server.url + path, timeout=5)
        assert ping.status_code == 503 and ping.json()["error_code"] == "SERVICE_UNAVAILABLE"

    server.wait_ready()
    assert requests.get(server.url + "/api/health/ready").json() == {"status": "ready"}
    assert server.predict(WINE_JSON.read_bytes()).status_code == 200
    assert requests.get(server.url + "/api/status").json()["model"]["ready"] is True
    assert requests.get(server.url + "/ping").content == b"\n"
