"""The samples served from their conf files (in-process) and scored over HTTP."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import DIGIT_PNG, MNIST, TEST_PLUGINS, WINE_JSON


@pytest.fixture(scope="module")
def wine_rows():
    doc = json.loads(WINE_JSON.read_text())
    columns = [c for c in doc["columns"] if c != "quality"]
    index = [doc["columns"].index(c) for c in columns]
    return np.array([[row[i] for i in index] for row in doc["data"]], dtype="float32")


@pytest.fixture(scope="module")
def wine_expected(sample_models, wine_rows):
    import mlflow.sklearn

    return mlflow.sklearn.load_model(str(sample_models["wine"])).predict(wine_rows)


def test_sklearn_wine_answers_the_models_own_predictions(wine_server, wine_expected):
    r = wine_server.predict(WINE_JSON.read_bytes())
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert np.allclose(r.json(), wine_expected, rtol=1e-6)
    assert len(r.json()) == 3


def test_onnx_export_agrees_with_sklearn(onnx_server, wine_expected):
    r = onnx_server.predict(WINE_JSON.read_bytes())
    assert r.status_code == 200
    assert np.allclose(r.json(), wine_expected, atol=1e-4)


@pytest.mark.parametrize("server", ["wine_server", "onnx_server"])
def test_wine_as_csv(request, server, wine_expected):
    r = request.getfixturevalue(server).predict(WINE_JSON.read_bytes(), accept="text/csv")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert np.allclose([float(line) for line in r.text.splitlines()], wine_expected, atol=1e-4)


def test_wine_with_charset_parameter_and_mlflow_wrapping(wine_server, wine_expected):
    doc = json.loads(WINE_JSON.read_text())
    r = wine_server.predict(json.dumps({"dataframe_split": doc}), content_type="application/json; charset=utf-8")
    assert r.status_code == 200
    assert np.allclose(r.json(), wine_expected, rtol=1e-6)


def test_wine_columns_in_another_order_give_the_same_answer(wine_server, wine_expected):
    doc = json.loads(WINE_JSON.read_text())
    order = list(reversed(range(len(doc["columns"]))))
    shuffled = {"columns": [doc["columns"][i] for i in order], "data": [[row[i] for i in order] for row in doc["data"]]}
    r = wine_server.predict(json.dumps(shuffled))
    assert np.allclose(r.json(), wine_expected, rtol=1e-6)


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/png"])
def test_mnist_digit_png(mnist_server, content_type):
    r = mnist_server.predict(DIGIT_PNG.read_bytes(), content_type=content_type)
    assert r.status_code == 200
    probabilities = r.json()
    assert len(probabilities) == 1 and len(probabilities[0]) == 10
    assert abs(sum(probabilities[0]) - 1) < 1e-4
    assert int(np.argmax(probabilities[0])) == 0


def test_mnist_accepts_jpeg_and_other_sizes(mnist_server):
    image = Image.open(DIGIT_PNG).resize((56, 56))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=95)
    r = mnist_server.predict(out.getvalue(), content_type="image/jpeg")
    assert r.status_code == 200
    assert int(np.argmax(r.json()[0])) == 0


def test_the_2020_keras_plugin_serves_the_digit_sample_unchanged(shared_app, mnist_server):
    """tests/plugins/legacy_mnist.py, the 2020 plugin, sends np.resize(image, (1, 784)) to Keras' predict."""
    legacy = shared_app("--plugin-file", TEST_PLUGINS / "legacy_mnist.py", "--model-uri", MNIST / "model")
    r = legacy.predict(DIGIT_PNG.read_bytes(), content_type="application/octet-stream")
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json(), mnist_server.predict(DIGIT_PNG.read_bytes(), "image/png").json(), atol=1e-6)
    assert int(np.argmax(r.json()[0])) == 0


def test_mnist_as_csv_row(mnist_server):
    r = mnist_server.predict(DIGIT_PNG.read_bytes(), content_type="image/png", accept="text/csv")
    assert r.status_code == 200
    assert len(r.text.strip().split(",")) == 10


def test_status_keeps_the_2020_keys(wine_server):
    status = wine_server.get("/api/status").json()
    system = status["system"]
    assert set(system) == {"pid", "current_dir", "python.version", "request", "current_logging_level"}
    assert set(system["request"]) == {"url_root", "remote_addr"}
    assert system["request"]["remote_addr"] == "127.0.0.1"
    assert system["request"]["url_root"] == wine_server.url + "/"
    assert system["current_logging_level"] == "INFO"
    assert status["plugin"]["request_content_types"] == ["application/json"]
    assert status["model"]["uri"] == "plugin_samples/sklearn_wine/model"
    from mlflow_pluggable_scoring_server import __version__

    assert status["server"]["version"] == __version__
