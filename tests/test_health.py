"""Liveness and readiness; predictions refused with 503 until the model is loaded. In-process."""

from conftest import TEST_PLUGINS, WINE, WINE_JSON


def test_ready_only_once_the_model_is_loaded(make_app):
    server = make_app("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", "behaviours.SlowLoad",
                      "--model-uri", WINE / "model", wait=False)
    # The app answers at once, long before the model is loaded.
    live = server.get("/api/health/live")
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    ready = server.get("/api/health/ready")
    assert ready.status_code == 503 and ready.json()["error_code"] == "SERVICE_UNAVAILABLE"
    early = server.predict(WINE_JSON.read_bytes())
    assert early.status_code == 503 and early.json() == {
        "error_code": "SERVICE_UNAVAILABLE", "message": "the model is still loading; retry shortly"}
    assert server.get("/api/status").json()["model"]["ready"] is False
    for path in ("/ping", "/health"):  # MLflow's health checks: load balancers wait for a 200
        ping = server.get(path)
        assert ping.status_code == 503 and ping.json()["error_code"] == "SERVICE_UNAVAILABLE"

    server.wait_ready()
    assert server.get("/api/health/ready").json() == {"status": "ready"}
    assert server.predict(WINE_JSON.read_bytes()).status_code == 200
    assert server.get("/api/status").json()["model"]["ready"] is True
    assert server.get("/ping").content == b"\n"
