"""The serving core as a hostile client meets it: real server processes on 127.0.0.1.

Slow clients, the read deadline, broken HTTP framing, a body cut short. Every test is bounded
in requests and in time. (Readiness, SIGTERM, a killed master and more: test_lifecycle.py.)
"""

import re
import socket
import statistics
import threading
import time

import pytest
import requests

from conftest import WINE, WINE_JSON, WINE_ONNX

BODY = WINE_JSON.read_bytes()
MARKER = "zqxREQUESTqxz"  # put into hostile requests: it must never come back


def latencies(server, count=20):
    times = []
    for _ in range(count):
        started = time.monotonic()
        assert server.predict(BODY).status_code == 200
        times.append(time.monotonic() - started)
    return times


class SlowClient(threading.Thread):
    """Sends a request a byte every ``pace`` seconds (its head, or its body after a whole head), for at most ``limit`` s."""

    def __init__(self, port, part, pace=0.5, limit=8.0):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.part, self.pace, self.limit = part, pace, limit
        self.answer, self.answered_after = b"", None
        self.stop = threading.Event()

    def run(self):
        head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(BODY)
        trickle = head if self.part == "head" else BODY
        started = time.monotonic()
        try:
            if self.part == "body":
                self.sock.sendall(head)
            self.sock.settimeout(self.pace)
            for byte in trickle:
                self.sock.sendall(bytes([byte]))
                try:  # an answer (or the end of the connection) stops the trickle
                    chunk = self.sock.recv(4096)
                except TimeoutError:
                    chunk = None
                if chunk is not None:
                    self.answer, self.answered_after = chunk, time.monotonic() - started
                    self.sock.settimeout(5)
                    while chunk:  # the rest of the answer, until the server closes the connection
                        chunk = self.sock.recv(4096)
                        self.answer += chunk
                    break
                if self.stop.is_set() or time.monotonic() - started > self.limit:
                    break
        except OSError:
            pass
        finally:
            self.sock.close()


def test_slow_clients_do_not_hold_up_the_others(wine_process):
    """Default settings: 10 slow clients (5 sending their head, 5 their body, a byte every 0.5 s) add < 100 ms."""
    before = statistics.median(latencies(wine_process))
    slow = [SlowClient(wine_process.port, part) for part in ["head"] * 5 + ["body"] * 5]
    for client in slow:
        client.start()
    time.sleep(0.5)
    try:
        during = latencies(wine_process)
    finally:
        for client in slow:
            client.stop.set()
        for client in slow:
            client.join(10)
    print(f"median latency {before * 1000:.1f} ms alone, {statistics.median(during) * 1000:.1f} ms beside 10 slow clients")
    assert statistics.median(during) <= before + 0.1
    assert max(during) < 1.0
    assert all(not client.answer for client in slow), "a slow client was answered before the read deadline"


def test_more_slow_clients_than_a_worker_has_threads_hold_up_no_one(wine_process):
    """40 clients trickling their request (a byte every 0.5 s) and 40 that connect and send nothing, more than a
    worker's 32 threads: the poller reads requests until they are whole, so no thread waits on them and the other
    clients' predictions are answered as quickly as alone. When threads read, each of these clients held one."""
    slow = [SlowClient(wine_process.port, part) for part in ["head"] * 20 + ["body"] * 20]
    silent = [socket.create_connection(("127.0.0.1", wine_process.port)) for _ in range(40)]
    for client in slow:
        client.start()
    time.sleep(1)
    try:
        during = latencies(wine_process, count=10)
    finally:
        for client in slow:
            client.stop.set()
        for client in slow:
            client.join(10)
        for sock in silent:
            sock.close()
    assert max(during) < 1.0, during
    assert all(not client.answer for client in slow), "a slow client was answered before the read deadline"


def test_clients_sending_the_start_of_their_next_request_along_hold_no_thread(wine_process):
    """40 clients each send a request that a thread answers (a header with an underscore sends it to gunicorn's
    parser) and the first bytes of the next: the poller takes those bytes back and waits for the rest, so the 32
    threads are free for the predictions of other clients, which need them too. When threads waited for the rest,
    these clients held them all until the read timeout."""
    head, _, body = post("/api/predict", BODY).partition(b"\r\n\r\n")
    clients = [socket.create_connection(("127.0.0.1", wine_process.port)) for _ in range(40)]
    try:
        for sock in clients:
            sock.sendall(head + b"\r\nX_Via_Thread: 1\r\n\r\n" + body + b"POST /api/pre")
        time.sleep(1)
        during = []
        for _ in range(10):  # answered by threads too
            started = time.monotonic()
            headers = {"Content-Type": "application/json", "X_Via_Thread": "1"}
            assert wine_process.request("POST", "/api/predict", BODY, headers, timeout=10).status_code == 200
            during.append(time.monotonic() - started)
        for sock in clients:  # each got its first answer
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in clients:
            sock.close()
    assert max(during) < 1.0, during


def test_a_client_that_waits_for_100_continue_gets_it_and_its_answer(wine_process):
    """A client sending ``Expect: 100-continue`` waits for the server's go-ahead before its body: the poller does
    not wait for that body, gunicorn's parser answers 100 at once, then the prediction."""
    head = (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY))
    with socket.create_connection(("127.0.0.1", wine_process.port), timeout=3) as sock:
        sock.sendall(head)
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(BODY)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_a_request_trickled_in_within_the_read_timeout_is_answered(wine_process):
    """The poller reads a request sent a few bytes at a time, however it is cut, and answers it once whole."""
    request = post("/api/predict", BODY)
    with socket.create_connection(("127.0.0.1", wine_process.port), timeout=5) as sock:
        for start in range(0, len(request), 37):
            sock.sendall(request[start:start + 37])
            time.sleep(0.002)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def test_slow_clients_get_408_at_the_read_deadline(start_server):
    server = start_server("--conf", WINE / "conf.yaml", "--read-timeout", "2")
    slow = [SlowClient(server.port, part, limit=10) for part in ("head", "body")]
    for client in slow:
        client.start()
    for client in slow:
        client.join(15)
        assert client.answer.startswith(b"HTTP/1.1 408 "), client.answer
        assert 1.5 < client.answered_after < 4, client.answered_after
        head, _, body = client.answer.partition(b"\r\n\r\n")
        assert b"application/json" in head.lower()
        assert b'"error_code": "REQUEST_TIMEOUT"' in body and b"read_timeout of 2 s" in body
    assert server.predict(BODY).status_code == 200
    assert "Traceback" not in server.log(), server.log()


def raw(port, data, timeout=10):
    """Send raw bytes, half-close, and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


M = MARKER.encode()
FRAMING_CASES = {
    "duplicate Content-Length": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "duplicate Content-Type": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Type: text/" + M + b"\r\nContent-Length: 2\r\n\r\n{}",
    "bad HTTP version": b"GET /api/status HTTP/7." + M + b"\r\nHost: x\r\n\r\n",
    "no HTTP version": b"GET /api/status\r\n\r\n",
    "bad method": b"G(T /api/status HTTP/1.1\r\nHost: x\r\n\r\n",
    "lowercase method": b"get" + M + b" /api/status HTTP/1.1\r\nHost: x\r\n\r\n",
    "header without colon": b"GET /api/status HTTP/1.1\r\nHost: x\r\n" + M + b"\r\n\r\n",
    "header name with space": b"GET /api/status HTTP/1.1\r\nHost: x\r\nX " + M + b": 1\r\n\r\n",
    "64 KB header": b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Big: " + M * 5000 + b"\r\n\r\n",
    "10,000 headers": b"GET /api/status HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(10000)) + b"\r\n",
    "100 KB URL": b"GET /" + M * 7000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "unknown Transfer-Encoding": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: " + M + b"\r\n\r\n",
    "chunked and Content-Length": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "bad Expect": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: " + M
                  + b"\r\nContent-Length: 2\r\n\r\n{}",
    "obsolete line folding": b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  " + M + b"\r\n\r\n",
    "chunk size zz": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + M + b"\r\n0\r\n\r\n",
    "negative chunk size": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n-5\r\n" + M + b"\r\n0\r\n\r\n",
    "chunked without terminator": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n5\r\n{}   ",
    "body shorter than Content-Length": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: 5000\r\n\r\n" + BODY,
    # More digits than Python's int() takes from a string: the worker's framing must not raise.
    "a Content-Length of 5000 digits": b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: " + b"1" * 5000 + b"\r\n\r\n{}",
}


@pytest.mark.parametrize("case", FRAMING_CASES, ids=list(FRAMING_CASES))
def test_broken_framing_is_a_4xx_in_our_shape(wine_process, case):
    assert_refused_in_our_shape(raw(wine_process.port, FRAMING_CASES[case]), wine_process)


def assert_refused_in_our_shape(answer, server):
    status = int(re.match(rb"HTTP/1\.1 (\d{3}) ", answer).group(1))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert 400 <= status < 500, answer[:300]
    assert b"content-type: application/json" in head.lower(), answer[:300]
    assert re.fullmatch(rb'\{"error_code": "[A-Z_]+", "message": "[^"]+"\}\n?', body), body
    assert M not in answer.lower() and M.lower() not in answer.lower()
    assert "Traceback" not in server.log()
    assert server.alive()


def test_a_body_cut_short_is_not_scored(wine_process):
    answer = raw(wine_process.port, FRAMING_CASES["body shorter than Content-Length"])
    assert answer.startswith(b"HTTP/1.1 400 ") and b"ended after 474 of the 5000 bytes" in answer


def test_pipelined_requests_are_all_answered_in_order(wine_process):
    """Requests sent together on one connection (HTTP/1.1 pipelining) reach the parser in one read: each is
    answered, in order, without waiting for more bytes that the client will not send."""
    import json

    rows = json.loads(BODY)
    one_row = json.dumps({**rows, "data": rows["data"][:1]}).encode()
    bodies = [BODY, one_row, BODY]
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", wine_process.port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"".join(head % len(body) + body for body in bodies))
        answer, started = b"", time.monotonic()
        while answer.count(b"HTTP/1.1 ") < len(bodies) or not answer.endswith((b"]", b"]\n")):
            assert time.monotonic() - started < 5, answer
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed after {answer.count(b'HTTP/1.1 ')} of {len(bodies)} answers: {answer!r}"
            answer += chunk
    answers = [part.partition(b"\r\n\r\n")[2] for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert all(part.startswith(b"200 ") for part in answer.split(b"HTTP/1.1 ")[1:]), answer
    assert [len(json.loads(body)) for body in answers] == [3, 1, 3]
    assert time.monotonic() - started < 2  # not after the keep-alive timeout


@pytest.fixture(scope="session")
def onnx_process(shared_server):
    """The ONNX wine sample: its predictions stay far below workers.INLINE_MAX_SECONDS however busy the machine,
    so its worker answers the requests after a connection's first on its main thread, read by llhttp."""
    return shared_server("--conf", WINE_ONNX / "conf.yaml")


class KeptAlive:
    """One connection for several requests, each answer read whole (by its Content-Length) before the next is sent.
    A worker with quick models reads the requests after the first itself (inline_http.py), not with gunicorn's parser."""

    def __init__(self, port, rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.pending = b""

    def ask(self, data):
        self.sock.sendall(data)
        return self.answer()

    def answer(self):
        while b"\r\n\r\n" not in self.pending:
            self.pending += self.receive()
        head, _, rest = self.pending.partition(b"\r\n\r\n")
        length = int(re.search(rb"\r\ncontent-length: *(\d+)", head.lower()).group(1))
        while len(rest) < length:
            rest += self.receive()
        self.pending = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]

    def receive(self):
        chunk = self.sock.recv(65536)
        assert chunk, f"the server closed the connection; unread: {self.pending[:300]!r}"
        return chunk

    def close(self):
        self.sock.close()


def post(path, body, content_type="application/json", extra=b""):
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), content_type.encode(), len(body), extra)) + body


def get(path, extra=b""):
    return b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), extra)


def without_date(answer):
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


KEPT_ALIVE_REQUESTS = {
    "predict": post("/api/predict", BODY),
    "predict as CSV": post("/api/predict", BODY, extra=b"Accept: text/csv\r\n"),
    "invocations": post("/invocations", BODY),
    "unsupported media type": post("/api/predict", BODY, content_type="text/plain"),
    "not JSON": post("/api/predict", b"{" + MARKER.encode()),
    "not acceptable": post("/api/predict", BODY, extra=b"Accept: image/png\r\n"),
    "ready": get("/api/health/ready"),
    "no such route": get("/api/" + MARKER),
    "GET on predict": get("/api/predict"),
    "query string": get("/api/health/ready?x=%20y"),
}


@pytest.mark.parametrize("case", KEPT_ALIVE_REQUESTS, ids=list(KEPT_ALIVE_REQUESTS))
def test_what_llhttp_reads_is_answered_as_what_gunicorns_parser_reads(onnx_process, case):
    """The same request read by gunicorn's parser (sent with a header whose name has an underscore, which llhttp's
    path leaves to gunicorn, and gunicorn drops) and by the worker with llhttp, on a new connection and after two
    predictions on one: the same answer, byte for byte but the Date."""
    request = KEPT_ALIVE_REQUESTS[case]
    head, _, body = request.partition(b"\r\n\r\n")
    first = KeptAlive(onnx_process.port)
    kept = KeptAlive(onnx_process.port)
    try:
        expected = first.ask(head + b"\r\nX_Read_By: gunicorn\r\n\r\n" + body)
        for _ in range(2):
            assert kept.ask(post("/api/predict", BODY)).startswith(b"HTTP/1.1 200 ")
        answers = [kept.ask(request) for _ in range(3)]
        fresh = KeptAlive(onnx_process.port)
        answers.append(fresh.ask(request))
        fresh.close()
    finally:
        first.close()
        kept.close()
    assert b"Connection: keep-alive" in expected and MARKER.encode() not in expected
    assert [without_date(a) for a in answers] == [without_date(expected)] * 4


def test_connection_close_on_a_kept_alive_connection_closes_it(onnx_process):
    kept = KeptAlive(onnx_process.port)
    try:
        for _ in range(2):
            kept.ask(post("/api/predict", BODY))
        answer = kept.ask(post("/api/predict", BODY, extra=b"Connection: close\r\n"))
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in answer
        assert kept.sock.recv(100) == b""
    finally:
        kept.close()


@pytest.mark.parametrize("case", FRAMING_CASES, ids=list(FRAMING_CASES))
def test_broken_framing_on_a_kept_alive_connection_is_a_4xx_in_our_shape(onnx_process, case):
    """What gunicorn's parser refuses on a new connection is refused the same way after two predictions on one."""
    kept = KeptAlive(onnx_process.port)
    try:
        for _ in range(2):
            assert kept.ask(post("/api/predict", BODY)).startswith(b"HTTP/1.1 200 ")
        kept.sock.sendall(FRAMING_CASES[case])
        kept.sock.shutdown(socket.SHUT_WR)
        answer = kept.pending
        while chunk := kept.sock.recv(65536):
            answer += chunk
    finally:
        kept.close()
    assert_refused_in_our_shape(answer, onnx_process)


def test_a_kept_alive_client_that_does_not_read_holds_up_no_one(onnx_process):
    """A client on a kept-alive connection asks for 200 OpenAPI pages at once (5.6 MB, more than the socket
    buffers hold) and reads nothing for a second: the worker's main thread hands the rest of the answer to a
    thread, and the other clients' predictions go on; then the client reads all 200 answers, whole."""
    page = requests.get(f"http://127.0.0.1:{onnx_process.port}/api/swagger", timeout=10).content
    slow = KeptAlive(onnx_process.port, rcvbuf=2048)
    try:
        for _ in range(2):
            assert slow.ask(post("/api/predict", BODY)).startswith(b"HTTP/1.1 200 ")
        slow.sock.sendall(get("/api/swagger") * 200)
        time.sleep(0.5)
        during = latencies(onnx_process, count=10)
        answers = [slow.answer() for _ in range(200)]
    finally:
        slow.close()
    assert max(during) < 1.0, during
    assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(page) for a in answers)
    assert onnx_process.alive()


NOT_READING = {  # what each client asks for, then reads none of; "kept alive": after 2 predictions it read
    "a file (sendfile, a thread)": get("/swaggerui/swagger-ui-bundle.js") * 4,  # 4 MB
    "answers (sendall, a thread)": get("/api/swagger") * 200,  # 5.6 MB
    "answers on a kept-alive connection (the main thread, then a thread)": get("/api/swagger") * 200,
}


@pytest.mark.parametrize("kind", NOT_READING)
def test_clients_that_stop_reading_free_their_threads_at_the_write_timeout(start_server, kind):
    """40 clients, more than a worker's 32 threads, ask for more than the sockets' buffers hold and read none of it:
    each thread sending to one gives up after write_timeout and closes its connection (logged), so other clients'
    predictions go on. Without a write timeout the threads would wait for ever and no prediction be answered."""
    server = start_server("--conf", WINE_ONNX / "conf.yaml", "--write-timeout", "1")
    clients = []
    try:
        for _ in range(40):
            client = KeptAlive(server.port, rcvbuf=2048)
            clients.append(client)
            if kind.startswith("answers on a kept-alive"):
                for _ in range(2):
                    assert client.ask(post("/api/predict", BODY)).startswith(b"HTTP/1.1 200 ")
            client.sock.sendall(NOT_READING[kind])
        deadline = time.monotonic() + 20  # 200 OpenAPI pages take the worker a few seconds to write
        while "(write_timeout)" not in server.log():  # the first thread gave up
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        started = time.monotonic()
        during = [server.request("POST", "/api/predict", BODY, {"Content-Type": "application/json"}, timeout=10)
                  for _ in range(5)]
        waited = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
    assert [r.status_code for r in during] == [200] * 5
    assert waited < 3.5, waited
    assert "Traceback" not in server.log()
    assert server.alive()


def test_send_within_waits_for_a_client_reading_steadily_however_long_the_answer_takes():
    """The write timeout bounds each wait for room, not the whole answer: a client taking 64 kB every 0.1 s gets
    512 kB in about 0.8 s with a timeout of 0.3 s; one that reads nothing is given up on after 0.3 s."""
    from mlflow_pluggable_scoring_server.workers import WriteTimeout, send_within

    data = bytes(range(256)) * 2048
    sender, reader = socket.socketpair()
    with sender, reader:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        received = bytearray()

        def read_steadily():
            while len(received) < len(data):
                time.sleep(0.1)
                received.extend(reader.recv(65536))

        thread = threading.Thread(target=read_steadily, daemon=True)
        thread.start()
        started = time.monotonic()
        send_within(sender, data, 0.3)
        thread.join(10)
        assert bytes(received) == data
        assert time.monotonic() - started > 0.6  # longer than the timeout: it waited several times
        assert sender.gettimeout() is None  # left blocking, as it was
    sender, reader = socket.socketpair()
    with sender, reader:
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        started = time.monotonic()
        with pytest.raises(WriteTimeout):
            send_within(sender, data, 0.3)
        assert 0.3 <= time.monotonic() - started < 2


def test_with_the_access_log_on_every_request_on_a_kept_alive_connection_is_logged(tmp_path, start_server):
    """At DEBUG gunicorn writes an access line per request from its own request objects: requests after the
    first on a connection are then read by gunicorn, not by llhttp, and each has its line."""
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"plugin: {WINE_ONNX / 'plugin.py'}\nmodel_uri: {WINE_ONNX / 'model'}\nlogging: {{level: DEBUG}}\n")
    server = start_server("--conf", conf)
    kept = KeptAlive(server.port)
    try:
        for _ in range(4):
            assert kept.ask(post("/api/predict", BODY)).startswith(b"HTTP/1.1 200 ")
    finally:
        kept.close()
    deadline = time.monotonic() + 10  # a line is written after its answer
    while server.log().count('"POST /api/predict HTTP/1.1" 200') < 4:
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.1)
