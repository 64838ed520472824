"""The API's OpenAPI 3 document and Swagger UI, as served (in-process)."""

import json
from http import HTTPStatus

import pytest
from openapi_spec_validator import validate

from conftest import TEST_PLUGINS, WINE


@pytest.fixture(scope="module")
def mnist_spec(mnist_server):
    r = mnist_server.get("/api/swagger")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    return r.json()


def test_spec_is_valid_openapi_3(mnist_spec):
    validate(mnist_spec)
    assert mnist_spec["openapi"].startswith("3.")
    assert {"/api/predict", "/api/status"} <= set(mnist_spec["paths"])


def test_image_plugin_body_is_binary_so_the_ui_offers_a_file_picker(mnist_spec):
    content = mnist_spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert list(content) == ["image/png", "image/jpeg", "application/octet-stream"]
    assert all(media["schema"] == {"type": "string", "format": "binary"} for media in content.values())


def test_predict_documents_responses_and_errors(mnist_spec):
    responses = mnist_spec["paths"]["/api/predict"]["post"]["responses"]
    assert list(responses["200"]["content"]) == ["application/json", "text/csv"]
    for status in ("400", "406", "413", "415", "500"):
        assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_json_plugin_body_is_json(wine_server):
    spec = wine_server.get("/api/swagger").json()
    validate(spec)
    assert list(spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]) == ["application/json"]


def test_swagger_ui_is_served_offline_and_reads_the_spec(mnist_server):
    page = mnist_server.get("/api/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert '"/api/swagger"' in page.text or "'/api/swagger'" in page.text or "/api/swagger" in page.text
    bundle = [line for line in page.text.split('"') if line.endswith("swagger-ui-bundle.js")][0]
    assert mnist_server.get(bundle).status_code == 200
    root = mnist_server.get("/")
    assert root.status_code == 302 and root.headers["Location"].endswith("/api/docs")


def test_mlflow_endpoints_are_documented(mnist_spec):
    paths = mnist_spec["paths"]
    assert {"/invocations", "/ping", "/health", "/version"} <= set(paths)
    invocations, predict = paths["/invocations"]["post"], paths["/api/predict"]["post"]
    assert invocations["requestBody"] == predict["requestBody"]
    assert invocations["responses"] == predict["responses"]
    assert set(paths["/ping"]["get"]["responses"]) == {"200", "503"}


def test_each_error_status_has_its_own_example(mnist_spec):
    """Every error response shows its own error_code and a message as the server words it."""
    for path in ("/api/predict", "/invocations"):
        responses = mnist_spec["paths"][path]["post"]["responses"]
        examples = {status: r["content"]["application/json"]["example"] for status, r in responses.items() if status >= "400"}
        assert {"400", "401", "406", "413", "415", "500", "503", "504"} <= set(examples)
        for status, example in examples.items():
            assert example["error_code"] == HTTPStatus(int(status)).name
        assert len({e["message"] for e in examples.values()}) == len(examples)


@pytest.mark.parametrize("server, path", [
    ("wine_server", "/api/predict"),  # the sample plugin's example_request: the model's saved input example
    ("onnx_server", "/api/predict"),
    ("pyfunc_server", "/api/predict"),  # the pyfunc plugin: the model's input example as MLflow serves it
    ("pyfunc_server", "/invocations"),
])
def test_the_documented_example_scores(server, path, request):
    """The predict body's example in the spec is a real request: posted as documented, it gets 200."""
    app = request.getfixturevalue(server)
    spec = app.get("/api/swagger").json()
    validate(spec)
    content = spec["paths"][path]["post"]["requestBody"]["content"]
    media_type, documented = next(iter(content.items()))
    assert media_type == "application/json" and "example" in documented, content
    answer = app.predict(json.dumps(documented["example"]).encode(), content_type=media_type, path=path)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()
    assert len(predictions["predictions"] if isinstance(predictions, dict) else predictions) == 3  # the example's rows


def test_no_example_without_one(make_app, sample_models):
    """A 2020 plugin declares no example: the body has none, and the spec is still valid."""
    app = make_app("--plugin-file", TEST_PLUGINS / "legacy_wine.py", "--model-uri", WINE / "model")
    spec = app.get("/api/swagger").json()
    validate(spec)
    assert "example" not in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["application/json"]


@pytest.mark.parametrize("server, model", [
    ("pyfunc_server", "mlflow-model"),  # tensors: a row of zeros made from the metadata
    ("wine_server", "mlflow-model"),  # the sample's columns
    ("mnist_server", "mlflow-model"),  # a plugin that takes bodies: its example image, in base64
])
def test_the_documented_v2_example_scores(server, model, request):
    app = request.getfixturevalue(server)
    spec = app.get("/api/swagger").json()
    example = spec["paths"][f"/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]["example"]
    answer = app.request("POST", f"/v2/models/{model}/infer", json.dumps(example).encode(),
                         {"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"][0] == 1
