"""Optional bearer-token auth: token from a file or an env var, never from a flag. In-process."""

import pytest

from conftest import WINE, WINE_JSON, serve_main
from test_errors import assert_error

TOKEN = "s3cr3t-token-for-tests"


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def auth_server(shared_app, token_file):
    return shared_app("--conf", WINE / "conf.yaml", "--auth-token-file", token_file)


def predict(server, token=None, scheme="Bearer"):
    headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
    return server.predict(WINE_JSON.read_bytes(), headers=headers)


@pytest.mark.parametrize("token, scheme", [(None, None), ("wrong", "Bearer"), (TOKEN[:-1], "Bearer"), (TOKEN, "Basic"), ("", "Bearer")])
def test_missing_or_wrong_token_is_401(auth_server, token, scheme):
    r = predict(auth_server, token, scheme)
    assert_error(r, 401, "UNAUTHORIZED", "Authorization: Bearer")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in r.text


def test_invocations_needs_the_token_too(auth_server):
    r = auth_server.predict(WINE_JSON.read_bytes(), path="/invocations")
    assert_error(r, 401, "UNAUTHORIZED", "Authorization: Bearer")


def test_right_token_scores(auth_server):
    r = predict(auth_server, TOKEN)
    assert r.status_code == 200 and len(r.json()) == 3


@pytest.mark.parametrize("path, status", [("/api/health/live", 200), ("/api/health/ready", 200), ("/metrics", 401),
                                          ("/api/status", 401), ("/api/swagger", 401), ("/api/nothing", 401),
                                          ("/ping", 200), ("/health", 200), ("/version", 200),
                                          # V2: health and readiness are "health"; the rest needs the token
                                          ("/v2/health/live", 200), ("/v2/health/ready", 200),
                                          ("/v2/models/mlflow-model/ready", 200), ("/v2/models/mlflow-model", 401),
                                          ("/v2", 401)])
def test_only_health_is_open_by_default(auth_server, path, status):
    assert auth_server.get(path).status_code == status


def test_token_from_the_environment_and_open_metrics(make_app):
    server = make_app("--conf", WINE / "conf.yaml", "--public-endpoints", "health,metrics,docs",
                      env={"MLFLOW_PSS_AUTH_TOKEN": "from-env"})
    assert predict(server, "from-env").status_code == 200
    assert predict(server, TOKEN).status_code == 401
    for path in ("/metrics", "/api/swagger", "/api/docs", "/api/health/ready"):
        assert server.get(path).status_code == 200, path
    assert server.get("/api/status").status_code == 401


def test_there_is_no_token_flag():
    proc = serve_main("--auth-token", TOKEN)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_unreadable_token_file_stops_the_server(sample_models, tmp_path):
    proc = serve_main("--conf", WINE / "conf.yaml", "--auth-token-file", tmp_path / "missing")
    assert proc.returncode == 2 and "error: cannot read auth_token_file" in proc.stderr


def test_v2_infer_needs_the_token_and_answers_in_v2s_shape(auth_server):
    body = (WINE / "data" / "predict-wine-quality-v2.json").read_bytes()
    refused = auth_server.request("POST", "/v2/models/mlflow-model/infer", body)
    assert refused.status_code == 401 and set(refused.json()) == {"error"}
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    answered = auth_server.request("POST", "/v2/models/mlflow-model/infer", body, {"Authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == 200 and answered.json()["outputs"][0]["shape"] == [3, 1]
