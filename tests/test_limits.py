"""Limits: request body size, image pixels, request time. Each refusal is JSON, the server stays up.

In-process, but for the chunked body, which gunicorn reads first.
"""

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from conftest import DIGIT_PNG, MNIST, TEST_PLUGINS, WINE, WINE_JSON
from test_errors import assert_error


def png(width, height):
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("where", ["app", "process"])
def test_chunked_body_over_the_limit_is_413(where, make_app, start_server):
    args = ("--conf", WINE / "conf.yaml", "--max-request-bytes", "2000")
    server = make_app(*args) if where == "app" else start_server(*args)

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(100):
            yield b" " * 100

    assert_error(server.predict(chunks()), 413, "REQUEST_ENTITY_TOO_LARGE")
    assert server.alive() and server.predict(WINE_JSON.read_bytes()).status_code == 200


@pytest.fixture(scope="module")
def small_image_server(shared_app):
    return shared_app("--conf", MNIST / "conf.yaml", "--max-image-pixels", "10000")


def test_image_over_the_pixel_limit_is_400(small_image_server):
    assert small_image_server.predict(png(100, 100), content_type="image/png").status_code == 200
    assert_error(small_image_server.predict(png(101, 100), content_type="image/png"), 400, "BAD_REQUEST",
                 "101x100 pixels, over the server's limit of 10000")


def test_decompression_bomb_is_refused_cheaply(small_image_server):
    bomb = png(20000, 20000)  # 400 M pixels in about 400 kB of PNG
    assert len(bomb) < 1_000_000
    started = time.monotonic()
    assert_error(small_image_server.predict(bomb, content_type="image/png"), 400, "BAD_REQUEST", "pixels")
    assert time.monotonic() - started < 5
    assert small_image_server.alive()


def test_pixel_limit_also_guards_plugins_using_pillow_directly(make_app):
    server = make_app("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", "behaviours.RawPillow",
                          "--model-uri", WINE / "model", "--max-image-pixels", "10000")
    assert server.predict(DIGIT_PNG.read_bytes(), content_type="image/png").status_code == 200
    assert_error(server.predict(png(150, 100), content_type="image/png"), 400, "BAD_REQUEST")
    assert_error(server.predict(png(300, 100), content_type="image/png"), 400, "BAD_REQUEST")


def slow_body(seconds):
    return json.dumps({**json.loads(WINE_JSON.read_text()), "sleep": seconds})


@pytest.mark.parametrize("class_name, body", [("Slow", slow_body(3)), ("Spinning", WINE_JSON.read_text())])
def test_prediction_over_the_timeout_is_504(make_app, class_name, body):
    """Answered 504 at the deadline; Python code is stopped there (Spinning), a sleep ends first (Slow)."""
    server = make_app("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", f"behaviours.{class_name}",
                          "--model-uri", WINE / "model", "--request-timeout", "1")
    started = time.monotonic()
    assert_error(server.predict(body), 504, "GATEWAY_TIMEOUT", "limit of 1 s")
    assert time.monotonic() - started < 10
    assert server.alive()
    if class_name == "Slow":
        time.sleep(2.5)  # the model thread is free again once the 3 s sleep is over
    r = server.predict(slow_body(0.1))
    assert r.status_code == 200 and len(r.json()) == 3


SLEEPY_MODEL = """
import time

import mlflow


class Sleepy(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        time.sleep(float(model_input["sleep"].iloc[0]))
        return model_input["sleep"] * 2


mlflow.models.set_model(Sleepy())
"""


@pytest.mark.parametrize("caller", ["main thread", "other thread"])
def test_slow_pyfunc_model_is_504(make_app, tmp_path, caller):
    """The deadline reaches into MLflow's own scoring (which turns an ordinary exception into a 400),
    whichever thread answers: the worker's main thread (a SIGALRM) or a reading thread (the model thread)."""
    import mlflow

    (tmp_path / "sleepy.py").write_text(SLEEPY_MODEL)
    mlflow.pyfunc.save_model(tmp_path / "model", python_model=str(tmp_path / "sleepy.py"),
                             pip_requirements=[f"mlflow=={mlflow.__version__}"])
    server = make_app("--model-uri", tmp_path / "model", "--request-timeout", "1")

    def sleep(seconds):
        body = json.dumps({"dataframe_split": {"columns": ["sleep"], "data": [[seconds]]}})
        if caller == "main thread":
            return server.predict(body, path="/invocations")
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(server.predict, body, path="/invocations").result()

    started = time.monotonic()
    assert_error(sleep(3), 504, "GATEWAY_TIMEOUT", "limit of 1 s")
    assert time.monotonic() - started < 2.5
    time.sleep(2.5)
    r = sleep(0.1)
    assert r.status_code == 200 and r.json() == {"predictions": [{"sleep": 0.2}]}


EMPTY_ROWS = 5_500_000  # 16.5 MB of "[]," rows: under the 16 MiB body limit


@pytest.mark.parametrize("plugin", ["wine", "pyfunc", "legacy"])
@pytest.mark.parametrize("path", ["/api/predict", "/invocations"])
def test_a_body_of_empty_rows_is_refused_before_it_is_parsed(plugin, path, wine_server, pyfunc_server, shared_app):
    """16 MB of empty rows once cost a worker 4.4 s and 564 MB before its 400: now refused from the
    body's bytes, with no more memory than the body's own, whatever plugin would have parsed it."""
    import tracemalloc

    server = {"wine": wine_server, "pyfunc": pyfunc_server,
              "legacy": shared_app("--plugin-file", TEST_PLUGINS / "legacy_wine.py", "--model-uri", WINE / "model")}[plugin]
    body = b'{"columns": [], "data": [' + b"[]," * (EMPTY_ROWS - 1) + b"[]]}"
    tracemalloc.start()
    try:
        response = server.predict(body, path=path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_error(response, 400, "BAD_REQUEST", "more than 500,000 JSON arrays and objects")
    assert peak < 50e6 + 2 * len(body), f"{peak / 1e6:.0f} MB"  # the body itself and the test client's copy of it
    good = WINE / "data" / ("invocations-wine.json" if plugin == "pyfunc" else "predict-wine-quality.json")
    assert server.predict(good.read_bytes(), path=path).status_code == 200


@pytest.mark.parametrize("body", [
    b'{"columns": [], "data": [' + b"[]," * 9999 + b"[]]}",  # no columns: refused before its rows are read
    b'{"columns": ["alcohol"], "data": [[1.0], [], [2.0]]}',  # ragged
])
def test_empty_and_ragged_tables_are_400(body, wine_server):
    assert_error(wine_server.predict(body), 400, "BAD_REQUEST")
