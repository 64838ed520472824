"""Plain HTTP/1.1 requests that have arrived whole, read with llhttp and answered by gunicorn's own WSGI code.

A worker answers a request on its main thread when its models are quick (workers.py). gunicorn's reader
(its parser, its unreader and body objects, a thread of the pool and back) cost about 220 us of a request's
530 us on the ONNX wine sample (bench/README.md): more than the model and the decoding together. Here the
request is parsed by httptools (llhttp, the parser of Node.js and uvicorn) from the bytes the worker's
poller has read; the environ and the response are gunicorn's own (``wsgi.create``, ``Response``), written to
a buffer and sent in one call.

Only the plainest requests take this way: GET or POST, HTTP/1.1, an origin-form target, a Content-Length
body or none, within gunicorn's limits, no Expect, Upgrade, Transfer-Encoding, forwarding headers, or
header names with underscores. Anything else, malformed requests included, goes to gunicorn's parser in
a thread, which answers as it always has: the same errors in the same JSON shape.
"""

import io
from typing import NamedTuple

import httptools
from gunicorn.http.message import Message
from gunicorn.util import split_request_uri

METHODS = (b"GET", b"POST")
# Headers whose handling is gunicorn's alone: a body announced by Expect, another protocol, framing,
# and the headers through which a trusted proxy sets the scheme or the client's address.
LEFT_TO_GUNICORN = {b"EXPECT", b"UPGRADE", b"TRANSFER-ENCODING", b"FORWARDED"}


class Limits(NamedTuple):
    """gunicorn's limits on a request's head (0: none), read from its config once: each read of a setting costs."""

    line: int
    fields: int
    field_size: int

    @classmethod
    def of(cls, cfg):
        return cls(cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size)


class InlineRequest:
    """A request as gunicorn's ``wsgi.create`` and ``Response`` read one (gunicorn.http.message.Request's
    attributes), filled by llhttp's callbacks."""

    version = (1, 1)
    scheme = "http"
    must_close = False
    proxy_protocol_info = None
    _expected_100_continue = False
    should_close = Message.should_close  # "Connection: close", as gunicorn reads it

    def __init__(self):
        self.raw_url = b""
        self.raw_headers = []
        self.body_parts = []
        self.messages = 0

    # llhttp's callbacks
    def on_url(self, url):
        self.raw_url += url

    def on_header(self, name, value):
        self.raw_headers.append((name, value))

    def on_body(self, body):
        self.body_parts.append(body)

    def on_message_complete(self):
        self.messages += 1


def parse(data, limits):
    """The request that ``data`` holds whole, exactly: an :class:`InlineRequest`, or None when it is not one
    this module answers (gunicorn's parser then reads it, as it would have). ``limits``: :class:`Limits`."""
    req = InlineRequest()
    parser = httptools.HttpRequestParser(req)
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    method = parser.get_method()
    if req.messages != 1 or parser.get_http_version() != "1.1" or method not in METHODS:
        return None
    if not req.raw_url.startswith(b"/") or (limits.line and len(method) + len(req.raw_url) + 10 > limits.line):
        return None  # origin form only; 10: the spaces and "HTTP/1.1"
    if limits.fields and len(req.raw_headers) > limits.fields:
        return None
    headers = []
    for name, value in req.raw_headers:
        name = name.upper()
        if (b"_" in name or name in LEFT_TO_GUNICORN or name.startswith(b"X-FORWARDED-")
                or (limits.field_size and len(name) + len(value) + 4 > limits.field_size)):
            return None
        value = value.decode("latin-1").strip(" \t")
        if name == b"CONNECTION" and value.lower() not in ("close", "keep-alive"):
            return None
        headers.append((name.decode("latin-1"), value))
    req.method = method.decode("ascii")
    req.uri = req.raw_url.decode("latin-1")
    parts = split_request_uri(req.uri)
    req.path, req.query, req.fragment = parts.path or "", parts.query or "", parts.fragment or ""
    req.headers = headers
    req.body = io.BytesIO(b"".join(req.body_parts))
    return req


class ResponseBuffer:
    """Where gunicorn's ``Response`` writes the head and the body: sent in one call once the app is done."""

    def __init__(self):
        self.parts = []

    def sendall(self, data):
        self.parts.append(data)

    send = sendall

    def getvalue(self):
        return b"".join(self.parts)
