"""Prometheus /metrics, summed correctly over several gunicorn workers."""

import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import WINE, WINE_JSON


def samples(server):
    r = requests.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(r.text) for s in f.samples}


def total(found, name, **labels):
    return sum(v for (n, ls), v in found.items() if n == name and labels.items() <= dict(ls).items())


def test_counts_are_exact_across_workers(sample_models, start_server):
    server = start_server("--conf", WINE / "conf.yaml", "--workers", "2").wait_workers_ready(2)
    pids = set()
    for _ in range(30):
        assert server.predict(WINE_JSON.read_bytes()).status_code == 200
    for _ in range(300):
        pids.add(requests.get(server.url + "/api/status").json()["system"]["pid"])
        if len(pids) == 2:
            break
    for _ in range(7):
        assert server.predict(b"{", content_type="application/json").status_code == 400
    for _ in range(5):
        assert server.predict(b"x", content_type="text/plain").status_code == 415
    assert requests.get(server.url + "/no/such/path").status_code == 404
    found = samples(server)
    assert len(pids) == 2, "both workers answered, so the sums below span two processes"
    assert total(found, "scoring_requests_total", endpoint="/api/predict", method="POST", status="200") == 30
    assert total(found, "scoring_requests_total", endpoint="/api/predict", status="400") == 7
    assert total(found, "scoring_requests_total", endpoint="/api/predict", status="415") == 5
    assert total(found, "scoring_requests_total", endpoint="unmatched", status="404") == 1
    assert total(found, "scoring_prediction_errors_total", error_code="BAD_REQUEST") == 7
    assert total(found, "scoring_prediction_errors_total", error_code="UNSUPPORTED_MEDIA_TYPE") == 5
    assert total(found, "scoring_request_duration_seconds_count", endpoint="/api/predict") == 42
    assert total(found, "scoring_batch_size_count") == 30
