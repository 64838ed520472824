"""Adaptive batching: concurrent requests share model calls, and each still gets its own answer.

The batched apps run in-process, called from many threads at once as a threaded worker is;
the unbatched sample apps give the reference answers. /metrics' ``scoring_batch_size`` proves
that requests were merged. SIGTERM with batches in flight needs a real server process.
"""

import csv
import importlib.util
import io
import json
import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import DIGIT_PNG, MNIST, SAMPLES, TEST_PLUGINS, WINE, WINE_JSON, serve_main
from test_cli import assert_one_line_failure
from test_errors import assert_error
from test_metrics import samples, total

THREADS = 16
BATCHED = ("--max-batch-size", "16", "--max-batch-time-ms", "5", "--workers", "1")


def concurrently(server, bodies, content_type="application/json"):
    """POST every body at once (THREADS at a time); the responses in the order of the bodies."""
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda body: server.predict(body, content_type=content_type), bodies))


def batches(server):
    """``(model calls, requests they scored, calls that scored more than one)`` so far."""
    found = samples(server)
    calls = total(found, "scoring_batch_size_count")
    return calls, total(found, "scoring_batch_size_sum"), calls - total(found, "scoring_batch_size_bucket", le="1.0")


def merged_since(server, before, requests):
    """Assert that ``requests`` were scored since ``before`` (a :func:`batches`), some of them together."""
    calls, scored, merged = (now - then for now, then in zip(batches(server), before))
    assert scored == requests
    assert merged > 0 and calls < requests, f"{calls} model calls for {requests} requests: nothing was batched"


def wine_table(rows):
    """Rows of the wine CSV as "split" JSON bodies of 1, 2 or 3 rows each (so inputs differ in size)."""
    with open(SAMPLES / "data" / "winequality-white.csv") as f:
        reader = csv.reader(f)
        columns = next(reader)
        data = [[float(v) for v in row] for row in reader]
    bodies, start = [], 0
    for i in range(rows):
        size = 1 + i % 3
        bodies.append(json.dumps({"columns": columns, "data": data[start:start + size]}).encode())
        start += size * 37  # spread over the file's 4,898 rows
    return bodies


def digits(count):
    """``count`` different digit PNGs: the last of scikit-learn's digits, made MNIST-like as for training."""
    spec = importlib.util.spec_from_file_location("train_samples", SAMPLES / "train_samples.py")
    train_samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_samples)
    images = []
    for pixels in train_samples.mnist_like_digits()[0][-count:]:
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        images.append(out.getvalue())
    return images


MISSING_COLUMN = b'{"columns": ["alcohol"], "data": [[9.5]]}'
BROKEN_JSON = b'{"columns": ["a", '
NOT_NUMBERS = b'{"columns": ["x"], "data": [["nine"]]}'


@pytest.fixture(scope="module")
def batched_wine(shared_app):
    return shared_app("--conf", WINE / "conf.yaml", *BATCHED)


@pytest.fixture(scope="module")
def batched_mnist(shared_app):
    return shared_app("--conf", MNIST / "conf.yaml", *BATCHED)


def test_batched_wine_answers_each_request_as_unbatched(batched_wine, wine_server):
    bodies = wine_table(64)
    expected = [wine_server.predict(body).json() for body in bodies]
    assert len({json.dumps(e) for e in expected}) > 32  # answers differ: a mix-up would show
    before = batches(batched_wine)
    responses = concurrently(batched_wine, bodies)
    assert [r.status_code for r in responses] == [200] * 64
    assert [r.json() for r in responses] == expected  # forest rows are independent: exactly equal
    merged_since(batched_wine, before, 64)


def test_bad_requests_among_batched_ones_fail_alone(batched_wine, wine_server):
    bodies = wine_table(48)
    bad = {5: MISSING_COLUMN, 17: BROKEN_JSON, 30: NOT_NUMBERS, 41: MISSING_COLUMN}
    bodies = [bad.get(i, body) for i, body in enumerate(bodies)]
    expected = [wine_server.predict(body) for body in bodies]
    before = batches(batched_wine)
    responses = concurrently(batched_wine, bodies)
    for i, (r, unbatched) in enumerate(zip(responses, expected)):
        if i in bad:
            assert_error(r, 400, "BAD_REQUEST")
            assert r.json() == unbatched.json()  # the same message as unbatched
        else:
            assert r.status_code == 200 and r.json() == unbatched.json()
    merged_since(batched_wine, before, 48 - len(bad))
    assert batched_wine.alive()


@pytest.fixture(scope="module")
def batched_image(shared_app, sample_models):
    """The built-in image plugin on the Keras sample: batching with no plugin code."""
    return shared_app("--plugin", "image", "--model-uri", sample_models["mnist"], *BATCHED)


@pytest.mark.parametrize("batched", ["batched_mnist", "batched_image"])
def test_batched_digits_answer_each_image_as_unbatched(batched, mnist_server, request):
    batched_mnist = request.getfixturevalue(batched)
    images = digits(48)
    truncated, garbage = DIGIT_PNG.read_bytes()[:60], b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    bad = {7: truncated, 22: garbage, 39: truncated}
    bodies = [bad.get(i, image) for i, image in enumerate(images)]
    expected = [mnist_server.predict(body, content_type="image/png") for body in bodies]
    good = [np.array(e.json()) for i, e in enumerate(expected) if i not in bad]
    # Every answer is far from every other (100 times the tolerance below): a mix-up would show.
    assert all(not np.allclose(a, b, rtol=1e-4, atol=1e-4) for i, a in enumerate(good) for b in good[i + 1:])
    before = batches(batched_mnist)
    responses = concurrently(batched_mnist, bodies, content_type="image/png")
    for i, (r, unbatched) in enumerate(zip(responses, expected)):
        if i in bad:
            assert_error(r, 400, "BAD_REQUEST", "image")
            assert r.json() == unbatched.json()
        else:
            assert r.status_code == 200, r.text
            # A row's float results may differ from the row alone in the last bits (TensorFlow kernels).
            assert np.allclose(r.json(), unbatched.json(), rtol=1e-6, atol=1e-6)
    merged_since(batched_mnist, before, 48 - len(bad))


def test_a_request_alone_does_not_wait_for_company(make_app):
    server = make_app("--conf", WINE / "conf.yaml", "--max-batch-size", "16", "--max-batch-time-ms", "3000",
                          "--workers", "1")
    body = wine_table(1)[0]
    started = time.monotonic()
    for _ in range(4):
        assert server.predict(body).status_code == 200
    assert time.monotonic() - started < 6  # waiting out the 3 s window would take 12 s
    before = batches(server)  # and requests that come together still share model calls
    responses = concurrently(server, wine_table(32))
    assert [r.status_code for r in responses] == [200] * 32
    merged_since(server, before, 32)


def marked(rows, **marks):
    """The sample's wine table with mark columns (see tests/plugins/batchable.py) on every row."""
    doc = json.loads(WINE_JSON.read_text())
    return json.dumps({"columns": doc["columns"] + list(marks),
                       "data": [row + list(marks.values()) for row in doc["data"][:rows]]}).encode()


@pytest.fixture(scope="module")
def marked_server(shared_app):
    """Batching from the plugin's own defaults (max_batch_size 8): no batching flags."""
    return shared_app("--plugin-file", TEST_PLUGINS / "batchable.py", "--plugin-class", "batchable.Marked",
                        "--model-uri", WINE / "model", "--request-timeout", "5")


def test_a_failing_item_fails_only_its_own_request(marked_server, wine_server):
    plain = [marked(1 + i % 3) for i in range(31)]
    expected = [wine_server.predict(body).json() for body in plain]
    failing, invalid = {3, 12, 20, 27}, {8, 16}
    bodies = [marked(1 + i % 3, fail=1) if i in failing else marked(1 + i % 3, invalid=1) if i in invalid else body
              for i, body in enumerate(plain)]
    before = batches(marked_server)
    with ThreadPoolExecutor(THREADS) as pool:
        # The first request holds the model for 0.5 s: the others queue up and are batched 8 at a time.
        holding = pool.submit(marked_server.predict, marked(1, sleep=0.5))
        time.sleep(0.1)
        responses = list(pool.map(marked_server.predict, bodies))
        assert holding.result().status_code == 200
    for i, (r, quality) in enumerate(zip(responses, expected)):
        if i in failing:
            assert_error(r, 500, "INTERNAL_SERVER_ERROR", "server log")
        elif i in invalid:
            assert_error(r, 400, "BAD_REQUEST", "a row is marked invalid")
        else:
            assert r.status_code == 200, r.text
            assert [row["quality"] for row in r.json()] == quality  # DataFrames stacked and split back
    # Each batch held a marked row, failed, and was scored again one request at a time.
    assert batches(marked_server)[1] - before[1] == 1 + 31 - len(failing) - len(invalid)
    assert re.search(r"a batch of ([2-8]) failed \((RuntimeError|InvalidInput)\); scoring its requests one by one",
                     marked_server.log())
    assert "RuntimeError: a row of this batch is marked to fail" in marked_server.log()


def test_batched_request_over_the_timeout_is_504(marked_server):
    started = time.monotonic()
    assert_error(marked_server.predict(marked(1, sleep=6)), 504, "GATEWAY_TIMEOUT", "limit of 5 s")
    assert time.monotonic() - started < 15
    assert marked_server.alive()
    r = marked_server.predict(marked(2))  # waits for the slow batch to end, within its own 5 s
    assert r.status_code == 200 and len(r.json()) == 2


def test_sigterm_answers_every_batched_request_in_flight(sample_models, start_server):
    server = start_server("--plugin-file", TEST_PLUGINS / "batchable.py", "--plugin-class", "batchable.Marked",
                          "--model-uri", WINE / "model")
    bodies = [marked(1 + i % 3, sleep=0.5) for i in range(16)]  # two or more batches of 0.5 s each
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(server.predict, body) for body in bodies]
        time.sleep(0.3)
        os.kill(server.proc.pid, signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 16
    assert [len(r.json()) for r in responses] == [1 + i % 3 for i in range(16)]
    assert server.proc.wait(timeout=60) == 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0


@pytest.mark.parametrize("args, message", [
    (("--plugin-file", TEST_PLUGINS / "legacy_wine.py", "--max-batch-size", "4"),
     "max_batch_size is 4 but plugin Plugin cannot batch: it must subclass BatchPlugin"),
    (("--conf", WINE / "conf.yaml", "--max-batch-size", "0"), "max_batch_size: Input should be greater than or equal to 1"),
    (("--conf", WINE / "conf.yaml", "--max-batch-time-ms", "-1"), "max_batch_time_ms: Input should be greater than or equal to 0"),
])
def test_batching_settings_are_checked_at_start_up(sample_models, args, message):
    assert_one_line_failure(serve_main(*args, "--model-uri", WINE / "model"), message)
