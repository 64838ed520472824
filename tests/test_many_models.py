"""Several models in one server (issue 17): routes per model in each protocol, status, OpenAPI, metrics,
V2's repository extension, the ``models`` settings, and what only processes show.

In-process: plugin_samples/several_models.yaml (the README's example: the wine sample plugin, the
``image`` plugin on the Keras digits, the pyfunc default on the wine model), and a two-model conf of
the wine model for the repository extension. Processes: a model no worker can load stops the server;
an unload sent to one of two workers reaches the other.
"""

import gc
import json
import re
import time
import weakref

import numpy as np
import pytest
import requests
import tritonclient.http
import yaml
from openapi_spec_validator import validate

from conftest import DIGIT_PNG, ROOT, SAMPLES, TEST_PLUGINS, WINE, WINE_JSON, free_port, run_cli, serve_main
from test_auth import TOKEN
from test_cli import assert_one_line_failure
from test_errors import assert_error
from test_metrics import samples, total
from test_v2_codecs import triton_body, triton_result

SEVERAL = SAMPLES / "several_models.yaml"
WINE_V2 = WINE / "data" / "predict-wine-quality-v2.json"
WINE_SPLIT = WINE / "data" / "invocations-wine.json"  # MLflow's {"dataframe_split": ...}, for pyfunc
# What each model of SEVERAL takes: a body and its media type.
BODIES = {"wine": (WINE_JSON, "application/json"), "digits": (DIGIT_PNG, "image/png"),
          "wine-pyfunc": (WINE_SPLIT, "application/json")}
UNKNOWN = "no-such-model-4711"  # never quoted back
WINE_MODELS = [  # the two-model conf: the sample plugin and pyfunc, both on the wine model
    {"name": "wine", "model_uri": str(WINE / "model"), "plugin": str(WINE / "plugin.py")},
    {"name": "wine-pyfunc", "model_uri": str(WINE / "model")},
]


def write_conf(folder, name="conf.yaml", **conf):
    path = folder / name
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture(scope="module")
def two_wines(tmp_path_factory):
    return write_conf(tmp_path_factory.mktemp("conf"), models=WINE_MODELS)


@pytest.fixture(scope="module")
def several(shared_app):
    return shared_app("--conf", SEVERAL)


def predict(app, name, path=None):
    """Score ``name``'s body on ``path`` (by default its native route)."""
    body, media_type = BODIES[name]
    return app.predict(body.read_bytes(), content_type=media_type, path=path or f"/api/models/{name}/predict")


def predictions(answer):
    assert answer.status_code == 200, answer.text
    found = answer.json()
    return np.asarray(found["predictions"] if isinstance(found, dict) else found)


def v2_infer(app, name):
    """V2's answer for ``name``'s data: the wine columns as JSON, the digit as a binary BYTES tensor."""
    if name == "digits":
        body, length = triton_body({"images": np.array([DIGIT_PNG.read_bytes()], dtype=object)}, binary=True)
        headers = {"Inference-Header-Content-Length": str(length)}
    else:
        body, headers = WINE_V2.read_bytes(), {"Content-Type": "application/json"}
    return app.request("POST", f"/v2/models/{name}/infer", body, headers)


# --- each model on its routes


@pytest.mark.parametrize("name", BODIES)
def test_each_model_scores_on_its_native_mlflow_and_v2_routes(several, name):
    native = predictions(predict(several, name))
    assert native.shape == ((1, 10) if name == "digits" else (3,))
    np.testing.assert_array_equal(predictions(predict(several, name, f"/invocations/{name}")), native)
    answer = v2_infer(several, name)
    assert answer.status_code == 200, answer.text
    found = triton_result(answer.content, answer.headers)
    assert found.get_response()["model_name"] == name
    np.testing.assert_allclose(found.as_numpy("output-1").reshape(native.shape), native, rtol=1e-6)
    metadata = several.get(f"/v2/models/{name}").json()
    assert metadata["name"] == name and metadata["inputs"]
    assert several.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}


def test_the_plugins_answer_alike_for_one_model(several):
    """The sample plugin and pyfunc serve the same wine model: the same predictions."""
    np.testing.assert_allclose(predictions(predict(several, "wine-pyfunc")), predictions(predict(several, "wine")))


@pytest.mark.parametrize("path", ["/api/predict", "/invocations"])
def test_the_routes_that_name_no_model_serve_the_first(several, path):
    np.testing.assert_array_equal(predictions(several.predict(WINE_JSON.read_bytes(), path=path)),
                                  predictions(predict(several, "wine")))
    # not the digits' plugin: a PNG is not among the first model's media types
    assert several.predict(DIGIT_PNG.read_bytes(), content_type="image/png", path=path).status_code == 415


@pytest.mark.parametrize("method, path, status", [
    ("POST", "/api/predict/", 404), ("POST", "/api//predict", 308), ("POST", "/invocations/", 404),
    ("POST", "/api/models/wine/predict/", 404), ("POST", "/v2/models/wine/infer/", 404),
    ("POST", "/v2/models/wine/versions/infer", 405), ("GET", "/v2/models/wine/infer", 405),
    ("PUT", "/invocations/wine", 405), ("HEAD", "/api/predict", 405), ("OPTIONS", "/api/models/wine/predict", 200),
])
def test_near_misses_of_the_scoring_routes_are_answered_as_flask_routes_them(several, method, path, status):
    """POST on the scoring routes is answered in front of Flask; anything else about their paths is still
    Flask's (the statuses are those of the server before scoring_routes.py)."""
    r = several.request(method, path, WINE_JSON.read_bytes(), {"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    if status == 404:
        assert "no such endpoint" in r.text
    if status == 405 and method != "HEAD":
        assert "method not allowed here; allowed: " + ("GET" if "versions" in path else "POST") in r.text
    if status in (200, 405) and "versions" not in path:
        assert set(r.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


@pytest.mark.parametrize("method, path", [("POST", f"/api/models/{UNKNOWN}/predict"), ("POST", f"/invocations/{UNKNOWN}")])
def test_an_unknown_model_is_404_in_our_shape(several, method, path):
    r = several.request(method, path, WINE_JSON.read_bytes(), {"Content-Type": "application/json"})
    assert_error(r, 404, "NOT_FOUND", "no such model here")
    assert UNKNOWN not in r.text


@pytest.mark.parametrize("method, path", [("GET", f"/v2/models/{UNKNOWN}"), ("GET", f"/v2/models/{UNKNOWN}/ready"),
                                          ("GET", f"/v2/models/{UNKNOWN}/versions/1"),
                                          ("POST", f"/v2/models/{UNKNOWN}/infer")])
def test_an_unknown_model_is_404_in_v2s_shape(several, method, path):
    r = several.request(method, path, WINE_V2.read_bytes() if method == "POST" else None)
    assert r.status_code == 404 and set(r.json()) == {"error"}, r.text
    assert "no such model here" in r.json()["error"] and UNKNOWN not in r.text


def test_status_lists_every_model_and_keeps_the_2020_keys(several):
    status = several.get("/api/status").json()
    assert list(status) == ["system", "server", "plugin", "model", "models"]
    assert status["model"] == {"uri": "plugin_samples/sklearn_wine/model", "ready": True}  # the first's
    models = {m["name"]: m for m in status["models"]}
    assert list(models) == list(BODIES)
    assert models["digits"] == {
        "name": "digits", "uri": "plugin_samples/keras_mnist/model", "version": None,
        "plugin": {"file": "image", "class": "plugin.Plugin"}, "state": "ready",
        "request_content_types": ["image/png", "image/jpeg", "application/octet-stream"],
        "response_content_types": ["application/json", "text/csv"]}
    assert models["wine"]["plugin"]["file"] == "plugin_samples/sklearn_wine/plugin.py"
    assert models["wine-pyfunc"]["plugin"]["file"] == "pyfunc"
    assert status["plugin"] == {"file": "plugin_samples/sklearn_wine/plugin.py", "class": "plugin.Plugin",  # the first's
                                "request_content_types": ["application/json"],
                                "response_content_types": ["application/json", "text/csv"]}
    assert models["wine"]["request_content_types"] == ["application/json"]
    assert "application/vnd.apache.parquet" in models["wine-pyfunc"]["request_content_types"]


def test_openapi_describes_each_models_routes_and_their_examples_score(several):
    spec = several.get("/api/swagger").json()
    validate(spec)
    paths = spec["paths"]
    for model in several.get("/api/status").json()["models"]:
        name = model["name"]
        for path in (f"/api/models/{name}/predict", f"/invocations/{name}"):
            operation = paths[path]["post"]
            content = operation["requestBody"]["content"]
            assert sorted(content) == sorted(model["request_content_types"]), path
            assert list(operation["responses"]["200"]["content"]) == model["response_content_types"], path
            for media_type, documented in content.items():
                if "example" in documented:  # the JSON ones: posted as documented, they score
                    answer = several.predict(json.dumps(documented["example"]).encode(), content_type=media_type, path=path)
                    assert answer.status_code == 200, (path, answer.text)
        assert {f"/v2/models/{name}", f"/v2/models/{name}/ready", f"/v2/models/{name}/infer"} <= set(paths)
    examples = [path for path, item in paths.items() if "example" in str(item.get("post", {}).get("requestBody", {}))]
    assert {"/api/models/wine/predict", "/api/models/wine-pyfunc/predict"} <= set(examples)
    # /api/predict is the first model's
    assert paths["/api/predict"]["post"]["requestBody"] == paths["/api/models/wine/predict"]["post"]["requestBody"]


def test_metrics_carry_the_model(several):
    before = samples(several)
    for name in BODIES:
        assert predict(several, name).status_code == 200
        assert v2_infer(several, name).status_code == 200
    found = samples(several)

    def count(found, **labels):
        return total(found, "scoring_requests_total", status="200", **labels)

    for name in BODIES:
        for endpoint in ("/api/models/<model>/predict", "/v2/models/<model>/infer"):
            assert count(found, model=name, endpoint=endpoint) == count(before, model=name, endpoint=endpoint) + 1
        assert found[("scoring_model_info", (("model", name), ("version", "")))] == 1
    assert total(found, "scoring_batch_size_count", model="digits") > total(before, "scoring_batch_size_count", model="digits")


# --- V2's repository extension


def test_the_repository_extension_is_off_by_default(several):
    assert several.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    for path in ("/v2/repository/index", "/v2/repository/models/wine/unload"):
        r = several.request("POST", path)
        assert r.status_code == 404 and set(r.json()) == {"error"}, r.text
    assert several.get("/api/status").json()["models"][0]["state"] == "ready"


def test_unload_and_load_one_model(make_app, two_wines):
    app = make_app("--conf", two_wines, "--model-repository")
    assert "model_repository" in app.get("/v2").json()["extensions"]
    index = app.request("POST", "/v2/repository/index")
    assert index.status_code == 200 and index.json() == [{"name": "wine", "state": "READY"},
                                                          {"name": "wine-pyfunc", "state": "READY"}]

    assert app.get("/v2/models/wine-pyfunc").status_code == 200  # its metadata, kept with its scorer
    scorer = weakref.ref(app.repository.get("wine-pyfunc").scorer)
    assert app.request("POST", "/v2/repository/models/wine-pyfunc/unload").status_code == 200
    gc.collect()
    assert scorer() is None, "an unloaded model is let go"
    for method, path in [("POST", "/api/models/wine-pyfunc/predict"), ("POST", "/invocations/wine-pyfunc")]:
        r = app.request(method, path, WINE_SPLIT.read_bytes(), {"Content-Type": "application/json"})
        assert_error(r, 503, "SERVICE_UNAVAILABLE", "unloaded", "POST /v2/repository/models/wine-pyfunc/load")
    for method, path in [("POST", "/v2/models/wine-pyfunc/infer"), ("GET", "/v2/models/wine-pyfunc/ready"),
                         ("GET", "/v2/models/wine-pyfunc")]:
        r = app.request(method, path, WINE_V2.read_bytes() if method == "POST" else None)
        assert r.status_code == 503 and "unloaded" in r.json()["error"], (path, r.text)
    # the other model, and the server, still serve
    assert app.predict(WINE_JSON.read_bytes(), path="/api/models/wine/predict").status_code == 200
    assert app.predict(WINE_JSON.read_bytes()).status_code == 200
    for path in ("/v2/health/ready", "/api/health/ready", "/ping", "/v2/models/wine/ready"):
        assert app.get(path).status_code == 200, path
    assert app.request("POST", "/v2/repository/index").json()[1] == {"name": "wine-pyfunc", "state": "UNAVAILABLE",
                                                                     "reason": "unloaded"}
    assert app.get("/api/status").json()["models"][1]["state"] == "unloaded"
    assert samples(app)[("scoring_model_info", (("model", "wine-pyfunc"), ("version", "")))] == 0
    validate(app.get("/api/swagger").json())  # asked while a model is unloaded: still whole once it is back

    assert app.request("POST", "/v2/repository/models/wine-pyfunc/load").status_code == 200
    assert app.predict(WINE_SPLIT.read_bytes(), path="/invocations/wine-pyfunc").status_code == 200
    assert v2_infer(app, "wine-pyfunc").status_code == 200
    assert app.get("/v2/models/wine-pyfunc/ready").status_code == 200
    assert len(app.get("/v2/models/wine-pyfunc").json()["inputs"]) == 11  # its signature's columns
    spec = app.get("/api/swagger").json()
    assert "example" in spec["paths"]["/invocations/wine-pyfunc"]["post"]["requestBody"]["content"]["application/json"]
    assert samples(app)[("scoring_model_info", (("model", "wine-pyfunc"), ("version", "")))] == 1
    for path in (f"/v2/repository/models/{UNKNOWN}/load", f"/v2/repository/models/{UNKNOWN}/unload"):
        r = app.request("POST", path)
        assert r.status_code == 404 and set(r.json()) == {"error"} and UNKNOWN not in r.text


def test_the_repository_extension_needs_the_token(make_app, two_wines, token_file):
    app = make_app("--conf", two_wines, "--model-repository", "--auth-token-file", token_file)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/v2/repository/index", "/v2/repository/models/wine/unload", "/v2/repository/models/wine/load"):
        r = app.request("POST", path)
        assert r.status_code == 401 and set(r.json()) == {"error"}, (path, r.text)
    assert app.get("/api/status", auth).json()["models"][0]["state"] == "ready"  # nothing was unloaded
    assert app.request("POST", "/v2/repository/index", headers=auth).status_code == 200
    assert app.request("POST", "/v2/repository/models/wine/unload", headers=auth).status_code == 200
    assert app.predict(WINE_JSON.read_bytes(), headers=auth).status_code == 503


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "token"
    path.write_text(TOKEN + "\n")
    return path


# --- settings


@pytest.mark.parametrize("conf, message", [
    ({"model_uri": str(WINE / "model"), "models": WINE_MODELS}, "give model_uri (one model) or models (several), not both"),
    ({"models": [WINE_MODELS[0], {**WINE_MODELS[1], "name": "wine"}]}, "models (from conf file"),
    ({"models": [WINE_MODELS[0], {**WINE_MODELS[1], "name": "wine"}]}, "two models are named 'wine'"),
    ({"models": [{**WINE_MODELS[0], "name": "a/b"}]}, "models.0.name (from conf file"),
    ({"models": [WINE_MODELS[0], {"name": "b"}]}, "models.1.model_uri (from conf file"),
    ({"models": [WINE_MODELS[0], "wine"]}, "models.1 (from conf file"),
    ({"models": [WINE_MODELS[0], {**WINE_MODELS[1], "plugin_file": "x.py"}]}, "models.1.plugin_file"),
    ({"models": []}, "no model: give --model-uri"),
    ({"models": [{**WINE_MODELS[0], "packages": ["requests==2.31.0"]}, {**WINE_MODELS[1], "packages": ["requests>=2.32"]}]},
     "models need both requests==2.31.0 and requests>=2.32: one environment cannot hold both"),
    ({"models": [WINE_MODELS[0], {**WINE_MODELS[1], "plugin": str(TEST_PLUGINS / "broken_import.py")}]},
     "model 'wine-pyfunc': plugin file"),
    ({"models": [WINE_MODELS[0], {**WINE_MODELS[1], "model_uri": "no/such/model"}]},
     "model 'wine-pyfunc': model URI 'no/such/model' does not resolve"),
], ids=["both", "duplicate-key", "duplicate", "bad-name", "no-uri", "not-a-mapping", "unknown-key", "none", "pins",
        "plugin-import", "model-path"])
def test_bad_models_stop_start_up_in_one_line(tmp_path, conf, message):
    proc = serve_main("--conf", write_conf(tmp_path, **conf))
    assert proc.returncode == 2
    assert_one_line_failure(proc, message)


def test_models_inherit_the_top_levels_plugin_keys(tmp_path, caplog):
    from mlflow_pluggable_scoring_server.webserver import args_settings, parse_args

    conf = write_conf(tmp_path, plugin=str(WINE / "plugin.py"), plugin_options={"a": 1}, max_batch_size=4,
                      packages=["pyyaml"], models=[
                          {"name": "a", "model_uri": "x"},
                          {"name": "b", "model_uri": "y", "plugin": "pyfunc", "plugin_options": {}, "packages": ["numpy"]}])
    a, b = args_settings(parse_args(["--conf", str(conf)])).served_models()
    assert (a.plugin, a.plugin_options, a.max_batch_size, a.packages) == (str(WINE / "plugin.py"), {"a": 1}, 4, ["pyyaml"])
    assert (b.plugin, b.plugin_options, b.max_batch_size, b.packages) == ("pyfunc", {}, 4, ["numpy"])
    # flags are the top level too
    a, b = args_settings(parse_args(["--conf", str(conf), "--plugin", "image", "--max-batch-size", "2"])).served_models()
    assert (a.plugin, a.max_batch_size, b.plugin, b.max_batch_size) == ("image", 2, "pyfunc", 2)
    with caplog.at_level("WARNING"):
        assert args_settings(parse_args(["--conf", str(conf)])).all_packages() == ["pyyaml", "numpy"]
    assert "the models share one environment with their packages merged: pyyaml, numpy" in caplog.text


def test_the_readme_shows_the_sample_conf():
    section = (ROOT / "README.md").read_text().split("\n## Serving several models\n", 1)[1]
    shown = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert yaml.safe_load(shown) == yaml.safe_load(SEVERAL.read_text())


# --- processes


@pytest.mark.slow  # a server process (the inner loop stays under 3 min)
def test_a_model_no_worker_can_load_stops_the_server_naming_it(tmp_path, sample_models):
    conf = write_conf(tmp_path, models=[WINE_MODELS[0], {"name": "unreadable", "model_uri": str(WINE / "model"),
                                                         "plugin": str(TEST_PLUGINS / "behaviours.py"),
                                                         "plugin_class": "behaviours.BadLoad"}])
    proc = run_cli("--conf", conf, "--workers", 2, "--port", free_port())
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = {line.split(" ERROR mlflow_pluggable_scoring_server: ")[1] for line in proc.stderr.splitlines()
              if " ERROR mlflow_pluggable_scoring_server: " in line}
    assert errors == {"error: model 'unreadable': plugin BadLoad cannot load model "
                      f"'{WINE / 'model'}': ValueError: this plugin cannot read that model"}, proc.stderr


def worker_states(server, name, want, timeout):
    """Poll /api/status (a new connection each time) until both workers show model ``name`` in state ``want``;
    returns the seconds it took."""
    started = time.monotonic()
    states = {}
    while time.monotonic() - started < timeout:
        status = requests.get(server.url + "/api/status", timeout=5).json()
        states[status["system"]["pid"]] = {m["name"]: m["state"] for m in status["models"]}[name]
        if len(states) == 2 and set(states.values()) == {want}:
            return time.monotonic() - started
    raise AssertionError(f"workers' states of {name} after {timeout} s: {states}")


@pytest.mark.slow  # a server process (the inner loop stays under 3 min)
def test_unload_and_load_reach_every_worker(start_server, two_wines):
    """Through Triton's client: one unload (or load) answered by one worker reaches the other within a second."""
    server = start_server("--conf", two_wines, "--workers", 2, "--model-repository").wait_workers_ready(4)
    triton = tritonclient.http.InferenceServerClient(server.url.removeprefix("http://"))
    split = WINE_SPLIT.read_bytes()
    triton.unload_model("wine-pyfunc")
    assert worker_states(server, "wine-pyfunc", "unloaded", timeout=3) < 1.5
    assert triton.get_model_repository_index() == [{"name": "wine", "state": "READY"},
                                                   {"name": "wine-pyfunc", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert not triton.is_model_ready("wine-pyfunc") and triton.is_model_ready("wine") and triton.is_server_ready()
    answers = [server.predict(split, path="/invocations/wine-pyfunc").status_code for _ in range(10)]
    assert answers == [503] * 10
    assert [server.predict(WINE_JSON.read_bytes()).status_code for _ in range(10)] == [200] * 10
    assert server.get("/v2/health/ready").status_code == 200

    triton.load_model("wine-pyfunc")
    assert worker_states(server, "wine-pyfunc", "ready", timeout=10) < 3
    assert triton.is_model_ready("wine-pyfunc")
    assert [server.predict(split, path="/invocations/wine-pyfunc").status_code for _ in range(10)] == [200] * 10
    assert "Traceback" not in server.log()
