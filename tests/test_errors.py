"""Bad input and failing plugins: the right status, a JSON error, no traceback, the server stays up.

In-process (the app with the real samples); the WSGI server's own refusals are in test_serving.py.
"""

import io

import pytest
from PIL import Image

from conftest import DIGIT_PNG, TEST_PLUGINS, WINE, WINE_JSON

SECRET = "tell-no-one-42"


def assert_error(r, status, error_code, *fragments):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == error_code
    for fragment in fragments:
        assert fragment in body["message"]
    assert "Traceback" not in r.text and SECRET not in r.text


@pytest.mark.parametrize(
    "body, content_type, accept, status, code, fragment",
    [
        (WINE_JSON.read_bytes(), "text/plain", None, 415, "UNSUPPORTED_MEDIA_TYPE", "send one of: application/json"),
        (WINE_JSON.read_bytes(), None, None, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type header is missing"),
        (WINE_JSON.read_bytes(), "application/x-www-form-urlencoded", None, 415, "UNSUPPORTED_MEDIA_TYPE", "not accepted"),
        (b"", "application/json", None, 400, "BAD_REQUEST", "request body is empty"),
        (b'{"columns": ["a", ', "application/json", None, 400, "BAD_REQUEST", "not valid JSON"),
        (b"\xc3\x28" + SECRET.encode(), "application/json", None, 400, "BAD_REQUEST", "not UTF-8"),
        (b'{"columns": ["alcohol"], "data": [[9.5]]}', "application/json", None, 400, "BAD_REQUEST", "missing columns: fixed acidity"),
        (b'{"columns": ["x"], "data": [["' + SECRET.encode() + b'"]]}', "application/json", None, 400, "BAD_REQUEST", "must be a number"),
        (b"[1, 2, 3]", "application/json", None, 400, "BAD_REQUEST", '"split" orientation'),
        (WINE_JSON.read_bytes(), "application/json", "image/png", 406, "NOT_ACCEPTABLE", "available: application/json, text/csv"),
    ],
)
def test_wine_bad_requests(wine_server, body, content_type, accept, status, code, fragment):
    assert_error(wine_server.predict(body, content_type=content_type, accept=accept), status, code, fragment)
    assert wine_server.alive()


def truncated_png():
    return DIGIT_PNG.read_bytes()[:60]


def garbage_image():
    return b"\x89PNG\r\n\x1a\n" + b"\x00" * 40 + SECRET.encode()


def gif_image():
    out = io.BytesIO()
    Image.new("L", (28, 28)).save(out, format="GIF")
    return out.getvalue()


@pytest.mark.parametrize(
    "make_body, content_type, status, code, fragment",
    [
        (truncated_png, "image/png", 400, "BAD_REQUEST", "image"),
        (truncated_png, "application/octet-stream", 400, "BAD_REQUEST", "image"),
        (garbage_image, "image/png", 400, "BAD_REQUEST", "image"),
        (lambda: SECRET.encode(), "image/png", 400, "BAD_REQUEST", "not a readable image"),
        (gif_image, "image/png", 400, "BAD_REQUEST", "format GIF is not accepted"),
        (lambda: b"", "image/png", 400, "BAD_REQUEST", "empty"),
        (lambda: DIGIT_PNG.read_bytes(), "application/json", 415, "UNSUPPORTED_MEDIA_TYPE", "image/png"),
    ],
)
def test_mnist_bad_images(mnist_server, make_body, content_type, status, code, fragment):
    assert_error(mnist_server.predict(make_body(), content_type=content_type), status, code, fragment)
    assert mnist_server.alive()


def test_http_level_errors_are_json(wine_server):
    assert_error(wine_server.get("/api/nothing-here"), 404, "NOT_FOUND", "no such endpoint")
    assert_error(wine_server.get("/api/predict"), 405, "METHOD_NOT_ALLOWED", "allowed: POST")
    assert_error(wine_server.request("DELETE", "/api/status"), 405, "METHOD_NOT_ALLOWED", "allowed: GET")


def test_body_over_the_limit_is_413(make_app):
    server = make_app("--conf", WINE / "conf.yaml", "--max-request-bytes", "1000")
    big = b'{"columns": ["a"], "data": [' + b"[1]," * 1000 + b"[1]]}"
    assert_error(server.predict(big), 413, "REQUEST_ENTITY_TOO_LARGE", "1000 bytes")
    assert server.predict(WINE_JSON.read_bytes()).status_code == 200


@pytest.fixture
def behaviour_server(make_app):
    """A plugin of tests/plugins/behaviours.py around the wine model, of this test's own (its log is read)."""
    def start(class_name):
        return make_app("--plugin-file", TEST_PLUGINS / "behaviours.py", "--plugin-class", f"behaviours.{class_name}",
                        "--model-uri", WINE / "model")
    return start


@pytest.mark.parametrize("class_name", ["Raising", "ReturnsNone", "Unencodable"])
def test_failing_plugin_is_500_and_logged_with_traceback(behaviour_server, class_name):
    server = behaviour_server(class_name)
    body = WINE_JSON.read_bytes().replace(b"quality", SECRET.encode())
    for _ in range(3):
        assert_error(server.predict(body), 500, "INTERNAL_SERVER_ERROR", "server log")
    assert server.alive()
    assert server.predict(body).status_code == 500  # still the same answer, still up
    assert "Traceback" in server.log()


def test_plugin_answering_with_an_image(behaviour_server):
    server = behaviour_server("ImageOut")
    r = server.predict(WINE_JSON.read_bytes())
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (3, 1)
    as_json = server.predict(WINE_JSON.read_bytes(), accept="application/json")
    assert as_json.status_code == 200 and as_json.headers["Content-Type"] == "application/json"
    assert_error(server.predict(WINE_JSON.read_bytes(), accept="text/csv"), 406, "NOT_ACCEPTABLE", "image/png")


HUGE_NUMBER = b'{"columns": ["alcohol"], "data": [[' + b"1" * 5000 + b"]]}"  # over Python's 4,300 digits


@pytest.mark.parametrize("server, path, body", [
    ("wine_server", "/api/predict", HUGE_NUMBER),
    ("onnx_server", "/api/predict", HUGE_NUMBER),
    ("pyfunc_server", "/invocations", b'{"dataframe_split": ' + HUGE_NUMBER + b"}"),
    ("pyfunc_server", "/api/predict", b'{"dataframe_split": ' + HUGE_NUMBER + b"}"),
])
def test_a_number_of_5000_digits_is_400(request, server, path, body):
    app = request.getfixturevalue(server)
    assert_error(app.predict(body, path=path), 400, "BAD_REQUEST", "more digits")
    assert app.alive()
