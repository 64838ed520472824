"""inline_http.parse: which requests a worker reads itself (llhttp) and which it leaves to gunicorn's parser; and
workers.request_length: how long the worker's poller reads a request before it is answered.

The worker's use of it is tested on a real server in test_serving.py (requests on a kept-alive connection)."""

import pytest
from gunicorn.config import Config

from mlflow_pluggable_scoring_server import inline_http
from mlflow_pluggable_scoring_server.workers import NOT_TOLD, POLLER_MAX_BYTES, POLLER_MAX_HEAD_BYTES, request_length

LIMITS = inline_http.Limits.of(Config())
HEAD = b"POST /api/predict?x=1&y=%20 HTTP/1.1\r\nHost: h:5000\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"


def test_a_plain_request_is_read_as_gunicorn_reads_one():
    req = inline_http.parse(HEAD + b"X-Trace:  a b \t\r\nAccept: text/csv\r\n\r\n{}", LIMITS)
    assert (req.method, req.uri, req.path, req.query, req.version) == ("POST", "/api/predict?x=1&y=%20", "/api/predict",
                                                                        "x=1&y=%20", (1, 1))
    assert req.headers == [("HOST", "h:5000"), ("CONTENT-TYPE", "application/json"), ("CONTENT-LENGTH", "2"),
                           ("X-TRACE", "a b"), ("ACCEPT", "text/csv")]
    assert req.body.read() == b"{}"
    assert not req.should_close()
    assert inline_http.parse(HEAD + b"Connection: close\r\n\r\n{}", LIMITS).should_close()
    get = inline_http.parse(b"GET /api/status HTTP/1.1\r\nHost: h\r\n\r\n", LIMITS)
    assert (get.method, get.path, get.query, get.body.read()) == ("GET", "/api/status", "", b"")


LEFT = {
    "HTTP/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "HEAD": b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
    "PUT": b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    "absolute form": b"GET http://h/api/status HTTP/1.1\r\nHost: h\r\n\r\n",
    "chunked": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "Expect": HEAD + b"Expect: 100-continue\r\n\r\n{}",
    "Upgrade": b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    "an odd Connection": HEAD + b"Connection: TE\r\n\r\n{}",
    "underscore": HEAD + b"X_Script_Name: /a\r\n\r\n{}",
    "forwarded scheme": HEAD + b"X-Forwarded-Proto: https\r\n\r\n{}",
    "Forwarded": HEAD + b"Forwarded: for=1.2.3.4\r\n\r\n{}",
    "duplicate Content-Length": HEAD + b"Content-Length: 3\r\n\r\n{}",
    "malformed header": HEAD + b"No colon\r\n\r\n{}",
    "obsolete folding": HEAD + b"X-A: 1\r\n  2\r\n\r\n{}",
    "body not whole": HEAD + b"\r\n{",
    "two requests": HEAD + b"\r\n{}" + HEAD + b"\r\n{}",
    "lowercase method": b"get / HTTP/1.1\r\n\r\n",
    "a line over gunicorn's limit": b"GET /" + b"a" * 4094 + b" HTTP/1.1\r\n\r\n",
    "a field over gunicorn's limit": b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 8190 + b"\r\n\r\n",
    "more fields than gunicorn's limit": b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
}


@pytest.mark.parametrize("case", LEFT, ids=list(LEFT))
def test_what_is_not_plain_is_left_to_gunicorn(case):
    assert inline_http.parse(LEFT[case], LIMITS) is None


def test_the_limits_are_gunicorns_own():
    assert inline_http.parse(b"GET /" + b"a" * 4000 + b" HTTP/1.1\r\n\r\n", LIMITS) is not None
    cfg = Config()
    cfg.set("limit_request_line", 100)
    assert inline_http.parse(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", inline_http.Limits.of(cfg)) is None
    cfg.set("limit_request_fields", 2)
    assert inline_http.parse(HEAD + b"\r\n{}", inline_http.Limits.of(cfg)) is None


# What the worker's poller keeps reading before a request goes to an answer (workers.request_length).
POSTED = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
LENGTHS = {
    "half a request line": (b"POST /api/pre", None),
    "half a head": (b"GET /ping HTTP/1.1\r\nHost: x\r\n", None),
    "a whole GET": (b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", len(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")),
    "a body still arriving": (POSTED + b"{}", len(POSTED) + 5),  # its length is known: the poller waits for it
    "a whole POST": (POSTED + b"[1,2]", len(POSTED) + 5),
    "two pipelined": (POSTED + b"[1,2]" + POSTED, len(POSTED) + 5),
    "leading empty lines": (b"\r\nGET /ping HTTP/1.1\r\n\r\n", len(b"\r\nGET /ping HTTP/1.1\r\n\r\n")),
    "chunked": (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", NOT_TOLD),
    "waiting for 100 Continue": (b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", NOT_TOLD),
    "a body larger than the poller keeps": (b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % POLLER_MAX_BYTES, NOT_TOLD),
    "not a request line": (b"\x16\x03\x01\x02\x00\x01\r\n", NOT_TOLD),
    "a lower-case method": (b"get / HTTP/1.1\r\n", NOT_TOLD),
    "a head larger than the poller keeps": (b"GET / HTTP/1.1\r\nX: " + b"a" * POLLER_MAX_HEAD_BYTES, NOT_TOLD),
    "a Content-Length of 5000 digits": (b"POST /x HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", NOT_TOLD),
    "a Content-Length not a number": (b"POST /x HTTP/1.1\r\nContent-Length: x\r\n\r\n", NOT_TOLD),
}


@pytest.mark.parametrize("case", LENGTHS)
def test_the_poller_keeps_reading_until_a_request_is_whole_or_for_gunicorn_to_read(case):
    data, expected = LENGTHS[case]
    assert request_length(bytearray(data)) == expected


def test_the_end_of_a_head_is_found_across_reads_without_searching_again_what_was_searched():
    data = bytearray(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r")
    assert request_length(data) is None
    data += b"\n"  # the end of the head straddles the two reads
    assert request_length(data, scanned=len(data) - 1) == len(data)
