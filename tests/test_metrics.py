"""Prometheus /metrics, summed correctly over several gunicorn workers."""

from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from conftest import WINE_JSON


def samples(server):
    r = server.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(r.text) for s in f.samples}


def total(found, name, **labels):
    return sum(v for (n, ls), v in found.items() if n == name and labels.items() <= dict(ls).items())


def test_counts_are_exact_across_workers(two_workers):
    server = two_workers
    before = samples(server)
    pids = set()
    for _ in range(30):
        assert server.predict(WINE_JSON.read_bytes()).status_code == 200
    # On a busy machine the kernel may hand every new connection of one client to the same worker:
    # ask from 8 threads at once, so that one worker is busy while the other accepts.
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            pids.update(pool.map(lambda _: server.get("/api/status").json()["system"]["pid"], range(40)))
            if len(pids) == 2:
                break
    for _ in range(7):
        assert server.predict(b"{", content_type="application/json").status_code == 400
    for _ in range(5):
        assert server.predict(b"x", content_type="text/plain").status_code == 415
    assert server.get("/no/such/path").status_code == 404
    found = samples(server)
    assert len(pids) == 2, "both workers answered, so the sums below span two processes"

    def added(name, **labels):
        return total(found, name, **labels) - total(before, name, **labels)

    assert added("scoring_requests_total", endpoint="/api/predict", method="POST", status="200") == 30
    assert added("scoring_requests_total", endpoint="/api/predict", status="400") == 7
    assert added("scoring_requests_total", endpoint="/api/predict", status="415") == 5
    assert added("scoring_requests_total", endpoint="unmatched", status="404") == 1
    assert added("scoring_prediction_errors_total", error_code="BAD_REQUEST") == 7
    assert added("scoring_prediction_errors_total", error_code="UNSUPPORTED_MEDIA_TYPE") == 5
    assert added("scoring_request_duration_seconds_count", endpoint="/api/predict") == 42
    assert added("scoring_batch_size_count") == 30


def test_an_app_alone_counts_its_own_requests(make_app):
    """Without gunicorn's samples folder (an app built in-process), /metrics still counts."""
    from conftest import WINE

    server = make_app("--conf", WINE / "conf.yaml")
    for _ in range(3):
        assert server.predict(WINE_JSON.read_bytes()).status_code == 200
    assert server.predict(b"{").status_code == 400
    found = samples(server)
    assert total(found, "scoring_requests_total", endpoint="/api/predict", status="200") == 3
    assert total(found, "scoring_prediction_errors_total", error_code="BAD_REQUEST") == 1


def test_counts_are_exact_when_the_plugin_imports_prometheus_client(start_server):
    """The samples folder is named before any plugin code runs, so a plugin importing prometheus_client
    at module level still gets metrics summed across workers."""
    from conftest import TEST_PLUGINS, WINE

    server = start_server("--plugin-file", TEST_PLUGINS / "imports_prometheus.py", "--model-uri", WINE / "model",
                          "--workers", "2").wait_workers_ready(2)
    for _ in range(40):
        assert server.predict(WINE_JSON.read_bytes()).status_code == 200
    # Counted in the shared samples folder: prometheus_client was imported in multiprocess mode.
    assert total(samples(server), "scoring_requests_total", endpoint="/api/predict", status="200") == 40
