"""Model URIs through a real sqlite-backed MLflow Model Registry: runs:/, models:/ by version, alias, stage.

In-process; the README's registry commands start a real server (test_readme.py).
"""

import numpy as np
import pytest

from conftest import DIGIT_PNG, MNIST, TEST_PLUGINS, WINE, WINE_JSON, WINE_ONNX


@pytest.fixture(scope="module")
def expected_wine(wine_server):
    return wine_server.predict(WINE_JSON.read_bytes()).json()


@pytest.mark.parametrize("uri", ["models:/sklearn_wine/1", "models:/sklearn_wine@champion", "models:/sklearn_wine/Production", "models:/sklearn_wine/latest", "runs"])
def test_wine_by_registry_uri(registry, make_app, expected_wine, uri):
    if uri == "runs":
        uri = f"runs:/{registry['runs']['sklearn_wine']}/model"
    server = make_app("--plugin-file", WINE / "plugin.py", "--model-uri", uri, env=registry["env"])
    r = server.predict(WINE_JSON.read_bytes())
    assert r.status_code == 200
    assert np.allclose(r.json(), expected_wine, rtol=1e-6)
    assert server.get("/api/status").json()["model"]["uri"] == uri


def test_onnx_and_mnist_by_alias(registry, make_app, expected_wine):
    onnx = make_app("--plugin-file", WINE_ONNX / "plugin.py", "--model-uri", "models:/onnx_wine@champion", env=registry["env"])
    assert np.allclose(onnx.predict(WINE_JSON.read_bytes()).json(), expected_wine, atol=1e-4)
    mnist = make_app("--plugin-file", MNIST / "plugin.py", "--model-uri", "models:/keras_mnist/1", env=registry["env"])
    r = mnist.predict(DIGIT_PNG.read_bytes(), content_type="image/png")
    assert int(np.argmax(r.json()[0])) == 0


def test_file_uri(make_app, expected_wine):
    server = make_app("--plugin-file", WINE / "plugin.py", "--model-uri", (WINE / "model").as_uri())
    assert np.allclose(server.predict(WINE_JSON.read_bytes()).json(), expected_wine, rtol=1e-6)


def test_relative_file_uri_as_in_2020(make_app, expected_wine):
    server = make_app("--plugin-file", WINE / "plugin.py", "--model-uri", "file:plugin_samples/sklearn_wine/model")
    assert np.allclose(server.predict(WINE_JSON.read_bytes()).json(), expected_wine, rtol=1e-6)


def test_2020_style_plugin_served_from_the_registry(registry, make_app, expected_wine):
    server = make_app("--plugin-file", TEST_PLUGINS / "legacy_wine.py", "--model-uri", "models:/sklearn_wine@champion",
                          env=registry["env"])
    r = server.predict(WINE_JSON.read_bytes(), content_type="application/json")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert np.allclose(r.json(), expected_wine, rtol=1e-6)
    csv = server.predict(WINE_JSON.read_bytes(), accept="text/csv")
    assert np.allclose([float(x) for x in csv.text.split()], expected_wine, rtol=1e-6)
    broken = server.predict(b'{"columns": [', content_type="application/json")
    assert broken.status_code == 400 and broken.json()["error_code"] == "BAD_REQUEST"
