"""The gunicorn worker: gunicorn's threaded worker, made to serve clients on a network directly.

- **Slow clients.** A request (its head and its body) must arrive within ``read_timeout``
  seconds of its first byte; a client that is slower is answered 408 and its connection
  closed. The worker's poller reads requests until they are whole, holding no thread, so
  slow clients do not hold up the others however many they are; threads get whole requests
  (and uploads larger than the poller keeps, chunked bodies, ``Expect: 100-continue``, which
  they read on). Predictions still run one at a time (or in batches) in the model's own thread.
- **Clients that do not read.** A thread sending an answer waits at most ``write_timeout`` seconds for the
  client to take some of it; then the connection is closed and the thread freed. A thread is never
  held by a client that stopped reading.
- **One CPU.** Once its models are loaded, the worker's Python threads run on one CPU (``cpu_affinity``, see
  affinity.py): the lock they take turns with is not handed from one CPU's caches to another's.
- **Readiness.** A worker takes no connection before its model is loaded (it tells the master
  it is alive meanwhile): a load balancer never reaches a worker that would answer 503.
- **SIGTERM.** The worker takes in the connections already waiting in the listen backlog, stops
  listening, answers them and every request in hand, and exits; idle keep-alive connections are
  closed.
- **A dead master.** The kernel sends the workers SIGTERM when their master dies (they finish
  what they hold and exit), and the last of them removes the metrics folder the master made.
- **Quick answers.** While its models predict quickly, a plain whole request (inline_http.py) is
  read by llhttp rather than gunicorn's parser and answered on the main thread, with no hand-off to
  a thread; its answer, written by gunicorn's own code to a buffer, goes out in one call (the rest
  from a thread if the client reads slowly). Other requests go to a thread, whose writes may wait.
- **Broken framing.** What gunicorn's HTTP parser refuses is answered in the server's JSON error
  shape with a 4xx status, logged in one line, never quoting the request. A request whose body
  was not read to its end (an error answered early, a broken chunked body) closes its connection.

Also gunicorn's logger, made to skip the access-log line unless it will be written.
"""

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import selectors
import signal
import socket
import ssl
import time
from functools import partial
from http import HTTPStatus

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi
from gunicorn.workers.gthread import DEFAULT_WORKER_DATA_TIMEOUT, ThreadWorker, TConn

from . import affinity, inline_http, metrics
from .errors import ReadTimeout, ScoringError

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
LINGER_SECONDS = 2.0  # gunicorn's own wait for a client to close after its last answer
SHUTDOWN_LINGER_SECONDS = 0.5  # the same wait for answers sent after SIGTERM
INLINE_MAX_SECONDS = 0.02  # predictions are answered on the main thread while they take less (moving average)
READ_BYTES = 65536  # what the poller reads of a connection at a time
POLLER_MAX_BYTES = 256 * 1024  # a request larger is read on by a thread (an upload): the poller keeps no more
POLLER_MAX_HEAD_BYTES = 65536  # nor a head larger (gunicorn's parser then refuses it, or reads it)
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,15})(?![\d])")  # longer: gunicorn's parser refuses it
REQUEST_LINE = re.compile(rb"(?:\r\n)*[A-Z0-9!#$%&'*+.^_`|~-]+ [^ \r\n]+ HTTP/\d\.\d\r\n")
NOT_TOLD = -1  # request_length: the request's head is whole, but where its body ends is for gunicorn's parser to find

# gunicorn's parser errors: the status to answer and what to say, never the request's own bytes.
FRAMING_ERRORS = [
    (http_errors.LimitRequestLine, HTTPStatus.REQUEST_URI_TOO_LONG, "the request line is longer than the server's limit"),
    (http_errors.LimitRequestHeaders, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
     "the request has more or longer header fields than the server's limit"),
    (http_errors.ExpectationFailed, HTTPStatus.EXPECTATION_FAILED, "the Expect header's expectation cannot be met; send the body"),
    (http_errors.UnsupportedTransferCoding, HTTPStatus.BAD_REQUEST, "the Transfer-Encoding is not supported; send chunked or none"),
    ((http_errors.InvalidRequestLine, http_errors.InvalidRequestMethod), HTTPStatus.BAD_REQUEST,
     "the request line is malformed; expected METHOD /path HTTP/1.1"),
    (http_errors.InvalidHTTPVersion, HTTPStatus.BAD_REQUEST, "the HTTP version is not supported; speak HTTP/1.0 or HTTP/1.1"),
    ((http_errors.InvalidHeader, http_errors.InvalidHeaderName, http_errors.ObsoleteFolding,
      http_errors.InvalidSchemeHeaders), HTTPStatus.BAD_REQUEST, "a header field is malformed, repeated or not allowed"),
    ((http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension),
     HTTPStatus.BAD_REQUEST, "the chunked request body is malformed"),
    (http_errors.ParseException, HTTPStatus.BAD_REQUEST, "the request is not valid HTTP/1.1"),
]


def framing_error(exc):
    """``(status, message)`` for an error of gunicorn's request parser, or None for any other exception."""
    if isinstance(exc, ScoringError):
        return exc.status_code, exc.message
    for kinds, status, message in FRAMING_ERRORS:
        if isinstance(exc, kinds):
            return status, message
    return None


def error_response(status, message):
    """A whole HTTP response in the server's error shape, closing the connection."""
    body = json.dumps({"error_code": status.name, "message": message}).encode()
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def too_late(seconds):
    return f"the request was not received within the server's read_timeout of {seconds:g} s"


class WriteTimeout(BrokenPipeError):
    """The client took none of an answer for ``write_timeout`` seconds: as good as gone (gunicorn's threads then
    close the connection, as for a broken pipe)."""


def send_within(sock, data, seconds):
    """Send all of ``data`` on the blocking or non-blocking ``sock``, waiting at most ``seconds`` each time the
    client takes none of it; then raise :class:`WriteTimeout`. A client reading slowly but steadily gets it all.

    The first try does not wait and costs no system call beyond the send (most answers fit in the socket's buffer).
    """
    view = memoryview(data).cast("B")
    sent = 0
    previous = sock.gettimeout()
    try:
        if not isinstance(sock, ssl.SSLSocket):  # TLS sockets take no flags
            if previous:  # a read deadline's timeout: Python would wait for room before even this send
                sock.settimeout(None)
            try:
                sent = sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
        if sent < len(view):
            sock.settimeout(seconds)  # a timeout per send: each waits for room, at most this long
        while sent < len(view):
            sent += sock.send(view[sent:])
    except TimeoutError:
        raise gave_up(seconds) from None
    finally:
        if sock.gettimeout() != previous:
            sock.settimeout(previous)


def gave_up(seconds):
    """Log, and return the :class:`WriteTimeout` to raise for, a client that took none of its answer for ``seconds``."""
    logger.warning("closed a connection whose client took none of its answer for %g s (write_timeout)", seconds)
    return WriteTimeout(errno.EPIPE, f"the client took none of its answer for {seconds:g} s")


class DeadlineSocket:
    """A client socket whose reads fail with :class:`ReadTimeout` once the request's read deadline has passed,
    and whose writes fail with :class:`WriteTimeout` when the client takes none of an answer for ``write_seconds``.

    The read deadline runs from the first byte of a request read by :meth:`read_request` until
    :meth:`done`; anything else is the socket's own.
    """

    def __init__(self, sock, seconds, write_seconds):
        self._sock = sock
        self.seconds = seconds
        self.write_seconds = write_seconds
        self.prefix = b""  # bytes the poller read from the socket already: reads return them first
        self.deadline = None
        self.reading = False
        self.expired = False

    @property
    def raw(self):
        return self._sock

    def feed(self, data, since):
        """Bytes the poller read of a request that started arriving at ``since`` (monotonic): reads return them
        first, and the read deadline runs from ``since``."""
        self.prefix = bytes(data)
        self.reading, self.deadline = True, since + self.seconds

    def read_request(self):
        self.reading = True
        if not self.prefix:  # else the poller's deadline holds
            self.deadline = None

    def done(self):
        if self.deadline is not None:  # a read set a timeout on the socket
            self._sock.settimeout(None)
        self.reading, self.deadline = False, None

    def _arm(self):
        if not self.reading:
            return
        if self.deadline is None:
            self.deadline = time.monotonic() + self.seconds
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self._expire()
        self._sock.settimeout(remaining)

    def _expire(self):
        self.expired = True
        raise ReadTimeout(too_late(self.seconds))

    def recv(self, size, *flags):
        if self.prefix and not any(flags):
            chunk, self.prefix = self.prefix[:size], self.prefix[size:]
            return chunk
        return self._read(self._sock.recv, (size, *flags))

    def recv_into(self, buffer, nbytes=0, *flags):
        if self.prefix and not any(flags):
            size = min(len(self.prefix), nbytes or len(buffer))
            buffer[:size], self.prefix = self.prefix[:size], self.prefix[size:]
            return size
        return self._read(self._sock.recv_into, (buffer, nbytes, *flags))

    def _read(self, method, args):
        self._arm()
        try:
            return method(*args)
        except TimeoutError:
            if self.reading:
                self._expire()
            raise

    def sendall(self, data):
        send_within(self._sock, data, self.write_seconds)

    def sendfile(self, file, offset=0, count=None):
        # gunicorn sends files (the Swagger UI's scripts) with socket.sendfile, which waits at most the
        # socket's timeout for room before each part.
        previous = self._sock.gettimeout()
        self._sock.settimeout(self.write_seconds)
        try:
            return self._sock.sendfile(file, offset, count)
        except TimeoutError:
            raise gave_up(self.write_seconds) from None
        finally:
            self._sock.settimeout(previous)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def quick(model):
    """Whether the requests of ``model`` (a :class:`~.repository.ServedModel`) may be answered on the main thread:
    its recent predictions were quick, it does not batch, and it is not predicting now."""
    scorer = model.scorer
    recent = scorer.recent_seconds  # None before the first prediction: unknown, so not quick
    return scorer.max_batch_size == 1 and recent is not None and recent < INLINE_MAX_SECONDS and not scorer.model_lock.locked()


def buffered(conn):
    """Whether ``conn`` holds bytes read from its socket past the last request, the start of a pipelined one: in
    gunicorn's parser, or left by the poller."""
    return (conn.parser is not None and conn.parser.unreader.buf.tell() > 0) or bool(getattr(conn.sock, "prefix", b""))


def request_length(data, scanned=0):
    """The length of the first request in ``data`` (bytes read from a connection), once its head is whole: its
    head and its body by Content-Length (``data`` may not hold all of it yet). None while the head is not whole
    (``scanned``: the bytes of ``data`` already searched for its end). ``NOT_TOLD`` when gunicorn's parser should
    read it now: its body is chunked, or waits for a ``100 Continue``, or is longer than the poller keeps, or its
    head is, or its request line is not one (to be refused)."""
    end = data.find(b"\r\n\r\n", max(scanned - 3, 0))
    if end < 0:
        line_end = data.find(b"\r\n", 2 if data.startswith(b"\r\n") else 0)
        if (line_end >= 0 and not REQUEST_LINE.match(data)) or len(data) >= POLLER_MAX_HEAD_BYTES:
            return NOT_TOLD
        return None
    head = bytes(data[:end]).lower()
    if b"\r\ntransfer-encoding:" in head or b"\r\nexpect:" in head or not REQUEST_LINE.match(data):
        return NOT_TOLD
    length = CONTENT_LENGTH.search(head)
    if length is None and b"\r\ncontent-length:" in head:  # not a number we read: gunicorn's parser judges it
        return NOT_TOLD
    whole = end + 4 + (int(length.group(1)) if length else 0)
    return NOT_TOLD if whole > POLLER_MAX_BYTES else whole


def orphaned(master):
    """Whether the master (pid ``master``) of this worker is dead or dying.

    ``getppid()`` alone can still name a master killed a moment ago: a child whose parent thread
    dies is handed first to another thread of the parent's process (a master that loaded a model
    has library threads), and only when the last one is gone to init. Meanwhile the master's
    process shows as a zombie in /proc.
    """
    if os.getppid() != master:
        return True
    try:
        with open(f"/proc/{master}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return os.path.isdir("/proc")  # gone (Linux); elsewhere getppid is all there is to ask
    return state in ("Z", "X")


def die_with_parent():
    """Ask the kernel for SIGTERM when the master dies (Linux); elsewhere gunicorn's own check, once a second, remains."""
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


class ScoringWorker(ThreadWorker):
    """gunicorn's threaded worker with read deadlines, readiness, a clean SIGTERM and JSON framing errors."""

    def init_process(self):
        self.lingering = {}  # sockets answered and half-closed -> when to close them anyway
        self.reading = {}  # connections whose request is arriving, read by the poller -> their read deadline
        die_with_parent()
        if orphaned(self.ppid):  # the master died before we asked
            os._exit(0)
        # Requests read by llhttp (inline_http.py): plain sockets only, within gunicorn's limits.
        self.inline_limits = None if self.cfg.is_ssl else inline_http.Limits.of(self.cfg)
        super().init_process()

    @property
    def scoring(self):
        """The app's repository of models and its settings (see app.create_app)."""
        return self.wsgi.extensions["mlflow_pss"]

    def run(self):
        if self.wait_for_model():
            self.pin_to_cpu()
            super().run()
        for sock in list(self.lingering):
            self.close_lingering(sock)
        if orphaned(self.ppid):  # the master cannot clean up any more
            metrics.cleanup_orphaned()

    def wait_for_model(self):
        """Take no connection before every model is loaded; meanwhile tell the master we are alive."""
        repository = self.scoring["repository"]
        while not repository.wait_ready(0.5):
            self.notify()
            if not self.alive or not self.is_parent_alive():
                return False
        return self.alive

    def pin_to_cpu(self):
        """With ``cpu_affinity``, run this worker's Python threads on one CPU, the one fewest workers use (affinity.py)."""
        if not self.scoring["settings"].cpu_affinity:
            return
        try:
            cpu = affinity.choose_cpu(self.age, self.ppid)
            if cpu is not None:
                affinity.pin(cpu)
                self.log.debug("worker %d: Python threads on CPU %d", self.pid, cpu)
        except OSError as e:  # a platform without affinity: run as the kernel sees fit
            self.log.warning("worker %d: cannot keep its threads on one CPU: %s", self.pid, e)

    def set_accept_enabled(self, enabled):
        # Called with False when the worker stops accepting: on shutdown (not alive), or when it
        # holds worker_connections connections (alive; the backlog is then served later).
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                self.drain(listener)
                # At once: from now on a new connection is refused, not accepted by the kernel and lost.
                listener.close()

    def drain(self, listener):
        """Take in every connection waiting in the backlog now, as a running worker does, and no more."""
        taken = None
        while taken != self.nr_conns:  # accept() counts each connection it takes; none left: no change
            taken = self.nr_conns
            self.accept(listener)

    def finish_request(self, conn, fs):
        # gunicorn closes a finished connection here, on the main thread, waiting up to 2 s for the
        # client to close its side: one client slow to close would stall every other connection
        # (and SIGTERM by 2 s a connection). Here that wait is the poller's.
        try:
            keep = fs.result() if not fs.cancelled() else False
        except Exception:
            keep = False
        if keep is True and self.alive and buffered(conn):
            # The client sent (part of) its next request along (HTTP/1.1 pipelining), read already: the socket
            # may never be readable again, so the poller would not report it. The poller takes those bytes back
            # and answers, or waits for the rest of the request, as for any.
            ahead = (conn.parser.unreader.take_buffered() if conn.parser is not None else b"") + conn.sock.prefix
            conn.sock.prefix = b""
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))
            self.start_reading(conn, bytearray(ahead))
            return self.serve_arrived(conn, conn.sock)
        if keep and self.alive:
            return super().finish_request(conn, fs)
        self.linger(conn.sock)

    def linger(self, sock):
        """Close ``sock`` after the client has read the answer: send FIN now, close when the client
        closes or LINGER_SECONDS later (closing with unread data would reset the answer). The
        connection counts until then, so that a worker shutting down waits for it."""
        sock = getattr(sock, "raw", sock)  # no read deadline any more
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
            self.poller.register(sock, selectors.EVENT_READ, self.on_lingering_readable)
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            util.close(sock)
            return
        self.lingering[sock] = time.monotonic() + (LINGER_SECONDS if self.alive else SHUTDOWN_LINGER_SECONDS)

    def on_lingering_readable(self, sock):
        try:
            if sock.recv(65536):
                return  # the client is still sending: read on, until it closes or time is up
        except BlockingIOError:
            return
        except Exception:  # reset, or anything else: close
            pass
        self.close_lingering(sock)

    def close_lingering(self, sock):
        if self.lingering.pop(sock, None) is not None:
            self.nr_conns -= 1
        try:
            self.poller.unregister(sock)
        except (OSError, KeyError, ValueError):
            pass
        util.close(sock)

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, until in self.reading.items() if until <= now]:
            self.refuse_late(conn)
        for sock in [s for s, until in self.lingering.items() if until <= now]:
            self.close_lingering(sock)

    def accept(self, listener):
        """Take a new connection into the poller, which reads its request (gunicorn hands it to a thread at once,
        where a client slow to send holds the thread): threads only get requests that have arrived. TLS
        connections still go to a thread, for their handshake."""
        if self.cfg.is_ssl:
            return super().accept(listener)
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, sock, client, listener.getsockname())  # non-blocking
        # As long as gunicorn's own wait for a first byte: its thread's, then its poller's.
        conn.timeout = time.monotonic() + DEFAULT_WORKER_DATA_TIMEOUT + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))

    def on_client_socket_readable(self, conn, client):
        """A connection in the poller (new, kept alive, or with a request arriving) has bytes: read them, and answer
        the requests they complete (:meth:`serve_arrived`). A request still arriving waits here, holding no thread,
        until its ``read_timeout`` (then 408)."""
        if self.cfg.is_ssl:  # TLS: gunicorn's threads read it
            return super().on_client_socket_readable(conn, client)
        sock = getattr(conn.sock, "raw", conn.sock)
        try:
            chunk = sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset
            chunk, conn.arriving = b"", None
        if conn not in self.reading:
            if not chunk:  # closed between requests
                return self.close_waiting(conn, client)
            self.unlist(conn)
            self.start_reading(conn, bytearray())
        elif not chunk:  # closed in the middle of a request: gunicorn's parser answers what it makes of it
            return self.to_thread(conn, client) if conn.arriving else self.close_waiting(conn, client)
        conn.arriving += chunk
        self.serve_arrived(conn, client)

    def serve_arrived(self, conn, client):
        """Answer the whole requests ``conn`` has read. A plain one (inline_http.py), while every model is quick
        (predicts quickly, one at a time), on the main thread, read by llhttp, with no hand-off to a thread and back;
        any other in a thread, read by gunicorn's parser. A request not whole yet stays in the poller."""
        while True:
            if conn.length is None:  # the head is not whole yet
                try:
                    conn.length = request_length(conn.arriving, conn.scanned)
                except Exception:  # noqa: BLE001 -- never on the main loop: gunicorn's parser judges the request
                    self.log.exception("cannot frame a request; gunicorn's parser reads it")
                    conn.length = NOT_TOLD
                conn.scanned = len(conn.arriving)
                if conn.length is None:
                    return  # more to come
            length = conn.length
            if length == NOT_TOLD or not all(map(quick, self.scoring["repository"])):
                return self.to_thread(conn, client)
            if len(conn.arriving) < length:
                return  # more to come
            req = None
            # An access log wants gunicorn's own request objects: with one on, gunicorn reads every request.
            if self.inline_limits is not None and not self.log.access_log.isEnabledFor(logging.INFO):
                req = inline_http.parse(bytes(conn.arriving[:length]), self.inline_limits)
            if req is None:  # not plain: gunicorn's parser reads it, in a thread (its writes may wait)
                return self.to_thread(conn, client)
            del conn.arriving[:length]
            conn.length, conn.scanned = None, 0
            del self.reading[conn]
            if not self.answer_inline(req, conn, client):
                return
            if not conn.arriving:
                conn.arriving = None
                conn.set_timeout()
                self.keepalived_conns.append(conn)
                return
            self.start_reading(conn, conn.arriving)  # a pipelined request follows

    def start_reading(self, conn, arriving):
        """``conn`` has the start of a request (``arriving``, maybe nothing yet): its read deadline runs from now."""
        conn.arriving, conn.length, conn.scanned, conn.since = arriving, None, 0, time.monotonic()
        self.reading[conn] = conn.since + self.scoring["settings"].read_timeout

    def unlist(self, conn):
        """Take ``conn`` off the lists of connections waiting in the poller."""
        if self.reading.pop(conn, None) is not None:
            return
        for waiting in (self.keepalived_conns, self.pending_conns):
            try:
                waiting.remove(conn)
                return
            except ValueError:
                pass

    def close_waiting(self, conn, client):
        self.unlist(conn)
        self.poller.unregister(client)
        self.nr_conns -= 1
        util.close(getattr(conn.sock, "raw", conn.sock))

    def to_thread(self, conn, client):
        """A thread answers the request, gunicorn's parser reading it from the bytes the poller has, then the socket."""
        self.unlist(conn)
        self.poller.unregister(client)
        self.with_deadlines(conn).feed(conn.arriving or b"", conn.since)
        conn.arriving = None
        conn.data_ready = True  # no wait for a first byte in gunicorn's handle()
        self.enqueue_req(conn)

    def refuse_late(self, conn):
        """408 to a client whose request has not arrived whole within read_timeout, and close its connection."""
        self.unlist(conn)
        sock = getattr(conn.sock, "raw", conn.sock)
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError):
            pass
        seconds = self.scoring["settings"].read_timeout
        self.log.warning("refused a request from %s: 408 Request Timeout (ReadTimeout)", (conn.client or ("",))[0])
        try:
            sock.send(error_response(HTTPStatus.REQUEST_TIMEOUT, too_late(seconds)), socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.arriving = None
        self.linger(sock)

    def answer_inline(self, req, conn, client):
        """Answer ``req``, read from ``conn`` by the poller, on the main thread, with gunicorn's environ and response
        written to a buffer. Returns whether the connection stays in the poller for its next request."""
        sock = getattr(conn.sock, "raw", conn.sock)
        try:
            answer, keep = self.serve_inline(req, conn)
        except Exception as e:  # noqa: BLE001 -- as gunicorn's handle(): a JSON 500, then close
            self.handle_error(req, sock, conn.client, e)
            answer, keep = b"", False
        try:
            sent = sock.send(answer, socket.MSG_DONTWAIT) if answer else 0
        except BlockingIOError:
            sent = 0
        except OSError:  # the client is gone
            sent, keep = len(answer), False
        if sent < len(answer):
            # The client reads slowly: a thread sends the rest, as gunicorn's threads send answers, and
            # finish_request puts the connection back (or closes it), on the main thread; a thread answers
            # the requests the client sent meanwhile.
            self.poller.unregister(client)
            self.with_deadlines(conn).prefix = bytes(conn.arriving or b"")
            conn.arriving = None
            conn.data_ready = True  # what it sent meanwhile may be all in the prefix: no wait for the socket
            rest = memoryview(answer)[sent:]
            fs = self.tpool.submit(self.send_rest, sock, rest, keep, conn.sock.write_seconds)
            fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))
            return False
        if keep and self.alive:
            return True
        self.poller.unregister(client)
        self.linger(sock)
        return False

    def serve_inline(self, req, conn):
        """The app's answer to ``req`` as bytes on the wire, and whether to keep the connection: gunicorn's
        ThreadWorker.handle_request, with the response written to a buffer."""
        environ, resp = {}, None
        try:
            self.cfg.pre_request(self, req)
            out = inline_http.ResponseBuffer()
            resp, environ = wsgi.create(req, out, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self.cfg.keepalive or len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                for item in respiter:  # a file wrapper too: no sendfile into a buffer
                    resp.write(item)
                resp.close()
            finally:
                if hasattr(respiter, "close"):
                    respiter.close()
            return out.getvalue(), not resp.should_close()
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    @staticmethod
    def send_rest(sock, rest, keep, seconds):
        send_within(sock, rest, seconds)
        return keep

    def wait_for_and_dispatch_events(self, timeout):
        # gunicorn's shutdown waits here for the whole graceful_timeout when nothing happens, and
        # only then closes the keep-alive connections that expired long before: check each second
        # (a tenth of one once shutting down), and at the first read deadline of a request arriving.
        timeout = min(timeout, 1.0 if self.alive else 0.1)
        first = next(iter(self.reading.values()), None)  # the earliest: read_timeout is the same for all
        if first is not None:
            timeout = min(timeout, max(first - time.monotonic(), 0.0))
        super().wait_for_and_dispatch_events(timeout)  # gunicorn's loops call murder_pending right after
        try:
            moved = affinity.rebalance()
        except (OSError, ValueError) as e:  # /proc unreadable: stay where we are
            self.log.debug("worker %d: cannot check its CPU: %s", self.pid, e)
        else:
            if moved is not None:
                self.log.info("worker %d: other processes took its CPU; Python threads moved to CPU %d", self.pid, moved)

    def with_deadlines(self, conn):
        """``conn``'s socket, made a :class:`DeadlineSocket` (read_timeout, write_timeout) if it is not one yet."""
        if not isinstance(conn.sock, DeadlineSocket):
            settings = self.scoring["settings"]
            conn.sock = DeadlineSocket(conn.sock, settings.read_timeout, settings.write_timeout)
        return conn.sock

    def handle(self, conn):
        """Read and answer a request, in a thread, within the read deadline (from the poller's first byte of it)."""
        self.with_deadlines(conn).read_request()
        return super().handle(conn)

    def handle_request(self, req, conn):
        keep_alive = super().handle_request(req, conn)
        # A body the app did not read to its end (an error answered before it was read, a broken
        # chunked body, an expired deadline) would be read as the start of the next request: close.
        try:
            unread = keep_alive and req.body.read(1)
        except Exception:
            unread = True
        conn.sock.done()
        return keep_alive and not unread and not conn.sock.expired

    def handle_error(self, req, client, addr, exc):
        known = framing_error(exc)
        if known is None:
            self.log.exception("error handling a request")
            status, message = HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error"
        else:
            status, message = known
            self.log.warning("refused a request from %s: %d %s (%s)", (addr or ("",))[0], status.value, status.phrase,
                             type(exc).__name__)
        try:
            util.write_nonblock(client, error_response(status, message))
        except Exception:
            self.log.debug("failed to send the error response")


class QuietAccessLogger(Logger):
    """gunicorn's logger, but an access line is only formatted when the access log takes it.

    With a logging config gunicorn formats every request's line, then drops it below INFO:
    a few percent of a small request's time.
    """

    def access(self, resp, req, environ, request_time):
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)
