"""Plugins by name: the built-in ones (pyfunc, image) and one from a package installed by the test."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import DIGIT_PNG, MNIST, WINE, run_cli, serve_main
from mlflow_pluggable_scoring_server.errors import StartupError
from mlflow_pluggable_scoring_server.plugin import installed_plugins, load_plugin, request_media_types
from test_cli import assert_one_line_failure

PLUGIN_PACKAGE = os.path.join(os.path.dirname(__file__), "plugin_package")


def test_built_in_plugins_are_installed_entry_points():
    plugins = installed_plugins()
    assert {"pyfunc", "image"} <= set(plugins)
    image = load_plugin("image", options={"size": [32, 24], "mode": "RGB"})
    assert type(image).__name__ == "ImagePlugin" and (image.size, image.mode) == ((32, 24), "RGB")
    assert request_media_types(image) == ["image/png", "image/jpeg", "application/octet-stream"]
    assert load_plugin("image", options={"size": "28x28"}).size == (28, 28)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"size": "big"}, "ImagePlugin: size must be WxH or [W, H]"),
        ({"size": [28]}, "ImagePlugin: size must be WxH or [W, H]"),
        ({"mode": "CMYK"}, "ImagePlugin: mode must be one of L, RGB, RGBA"),
        ({"scale": 0}, "ImagePlugin: scale must be a positive number"),
        ({"layout": "nhwc"}, "ImagePlugin: layout must be one of channels_last, channels_first"),
        ({"colour": "red"}, "unexpected keyword argument 'colour'"),
    ],
)
def test_bad_image_options_are_refused(options, message):
    with pytest.raises(StartupError, match=message.replace("[", r"\[")):
        load_plugin("image", options=options)


def test_image_plugin_answers_as_mlflow_pyfunc_predict(sample_models):
    """A Keras model goes through its predict_on_batch, not pyfunc's predict (Keras' predict): same answers."""
    import mlflow.pyfunc

    from test_batching import digits

    plugin = load_plugin("image")
    model = plugin.load_model(sample_models["mnist"])
    batch = np.concatenate([plugin.preprocess(model, png) for png in digits(16)])
    expected = mlflow.pyfunc.load_model(sample_models["mnist"]).predict(batch)
    assert expected.shape == (16, 10) and len(set(np.argmax(expected, axis=1))) >= 5, np.argmax(expected, axis=1)
    np.testing.assert_allclose(plugin.inference(model, batch), expected, rtol=0, atol=1e-6)


def png_to_jpeg(png):
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("L").save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_image_plugin_answers_as_the_keras_sample_plugin(image_server, mnist_server):
    png = DIGIT_PNG.read_bytes()
    for body, content_type in ((png, "image/png"), (png, "application/octet-stream"), (png_to_jpeg(png), "image/jpeg")):
        ours, sample = image_server.predict(body, content_type), mnist_server.predict(body, content_type)
        assert ours.status_code == sample.status_code == 200, ours.text
        assert np.asarray(ours.json()).shape == (1, 10)
        np.testing.assert_allclose(ours.json(), sample.json(), rtol=0, atol=1e-6)
    assert np.argmax(image_server.predict(png, "image/png").json()) == 0  # the digit is a 0
    csv = image_server.predict(png, "image/png", accept="text/csv")
    assert csv.status_code == 200 and len(csv.text.split(",")) == 10
    status = image_server.get("/api/status").json()
    assert status["plugin"]["file"] == "image"
    assert status["plugin"]["request_content_types"] == ["image/png", "image/jpeg", "application/octet-stream"]


def test_image_plugin_takes_the_size_of_a_flat_input_from_the_signature(shared_app, mnist_server):
    """The digit sample's signature is (-1, 784), as the 2020 model's input: 28x28 grey images, no option."""
    r = shared_app("--plugin", "image", "--model-uri", MNIST / "model").predict(DIGIT_PNG.read_bytes(), "image/png")
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json(), mnist_server.predict(DIGIT_PNG.read_bytes(), "image/png").json(), atol=1e-6)


# A Keras model as MLflow 1.x's mlflow.keras logged it: the keras flavor with its keras_module,
# data/keras_module.txt and data/save_format.txt beside data/model.h5, loaded by "mlflow.keras".
LEGACY_KERAS_MLMODEL = """\
artifact_path: model
flavors:
  keras:
    data: data
    keras_module: tensorflow.keras
    keras_version: 2.4.0
    save_format: h5
  python_function:
    data: data
    env: conda.yaml
    loader_module: mlflow.keras
    python_version: 3.8.10
run_id: 5f0c1e2d3b4a49c8a7b6c5d4e3f2a1b0
signature:
  inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 784]}}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]'
utc_time_created: '2021-06-01 12:00:00.000000'
"""


@pytest.fixture(scope="module")
def legacy_keras_model(tmp_path_factory):
    """A tiny digit model in MLflow 1.x's Keras layout, its H5 file written by Keras 3; returns (folder, model)."""
    import keras

    folder = tmp_path_factory.mktemp("legacy_keras") / "model"
    (folder / "data").mkdir(parents=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28 * 28,)), keras.layers.Dense(10, activation="softmax")])
    model.save(folder / "data" / "model.h5")
    (folder / "data" / "keras_module.txt").write_text("tensorflow.keras")
    (folder / "data" / "save_format.txt").write_text("h5")
    (folder / "MLmodel").write_text(LEGACY_KERAS_MLMODEL)
    return folder, model


def test_a_keras_h5_model_of_mlflow_1_is_served_by_the_image_and_pyfunc_plugins(make_app, legacy_keras_model):
    folder, model = legacy_keras_model
    x = np.asarray(Image.open(DIGIT_PNG).convert("L"), dtype=np.float32).reshape(1, 28 * 28) / 255
    expected = model.predict_on_batch(x)
    image = make_app("--plugin", "image", "--model-uri", folder).predict(DIGIT_PNG.read_bytes(), "image/png")
    assert image.status_code == 200, image.text
    np.testing.assert_allclose(image.json(), expected, atol=1e-6)
    pyfunc = make_app("--model-uri", folder).predict(json.dumps({"inputs": x.tolist()}), "application/json")
    assert pyfunc.status_code == 200, pyfunc.text
    np.testing.assert_allclose(pyfunc.json()["predictions"], expected, atol=1e-6)


def gif():
    out = io.BytesIO()
    Image.new("L", (28, 28)).save(out, format="GIF")
    return out.getvalue()


@pytest.mark.parametrize(
    "body, content_type, status, message",
    [
        (DIGIT_PNG.read_bytes()[:200], "image/png", 400, "image cannot be decoded"),
        (b"\x89PNG but not really an image", "image/png", 400, "not a readable image"),
        (gif(), "image/png", 400, "image format GIF is not accepted"),
        (b"", "image/png", 400, "request body is empty"),
        (DIGIT_PNG.read_bytes(), "text/plain", 415, "send one of: image/png, image/jpeg"),
    ],
)
def test_image_plugin_refuses_bad_images(image_server, body, content_type, status, message):
    r = image_server.predict(body, content_type)
    assert r.status_code == status
    assert set(r.json()) == {"error_code", "message"} and message in r.json()["message"]
    assert image_server.alive()


@pytest.mark.parametrize(
    "option, message",
    [("size=big", "ImagePlugin: size must be WxH"), ("mode=CMYK", "ImagePlugin: mode must be one of")],
)
def test_bad_image_options_stop_the_server_with_one_line(sample_models, option, message):
    proc = serve_main("--plugin", "image", "--plugin-option", option, "--model-uri", MNIST / "model")
    assert proc.returncode == 2
    assert_one_line_failure(proc, message)


@pytest.mark.slow  # a server process (the inner loop stays under 3 min)
def test_image_size_that_does_not_fit_the_model_stops_the_server(sample_models):
    proc = run_cli("--plugin", "image", "--plugin-option", "size=32x32", "--model-uri", MNIST / "model", timeout=300)
    assert proc.returncode != 0
    assert "error: plugin ImagePlugin cannot load model" in proc.stderr
    assert "32x32 L images do not fit the model's input shape (-1, 784)" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The test plugin package, installed with pip into a folder of its own (the venv is left as it is)."""
    work = tmp_path_factory.mktemp("plugin_package")
    source, site = work / "src", work / "site"
    shutil.copytree(PLUGIN_PACKAGE, source)  # the build writes build/ and *.egg-info/ beside the sources
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(source)], check=True, timeout=300)
    return site


def test_plugin_from_an_installed_package(plugin_site, start_server):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_site), os.environ.get("PYTHONPATH")]))}
    server = start_server("--plugin", "wordcount-test", "--model-uri", WINE / "model", env=env)
    r = server.predict(b"three little words", "text/plain")
    assert r.status_code == 200 and r.json() == {"words": 3, "model_uri": str(WINE / "model")}
    bad = server.predict(b"\xff\xfe not utf-8", "text/plain")
    assert bad.status_code == 400 and bad.json()["message"] == "request body is not UTF-8 text"
    status = server.get("/api/status").json()
    assert status["plugin"]["file"] == "wordcount-test" and status["plugin"]["request_content_types"] == ["text/plain"]
    # Without the package on the path the name is unknown, and the error lists what is installed.
    proc = serve_main("--plugin", "wordcount-test", "--model-uri", WINE / "model")
    assert_one_line_failure(proc, "no installed plugin named 'wordcount-test' (installed: image, pyfunc")
