"""The request path in one place: check the body, call the plugin, encode its answer.

No HTTP here (the web layer passes bytes and header values in, gets bytes and a
media type out), and no model details (the plugin owns those).
"""

import ctypes
import logging
import queue
import signal
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial

from .batching import Batcher
from .decoders import check_json_containers
from .errors import InvalidInput, NotReady, RequestTimeout, ScoringError
from .media import JSON, check_content_type, diagnose, encode, negotiate
from .plugin import Payload, request_media_types, response_media_types

logger = logging.getLogger(__name__)


def too_slow(seconds):
    return RequestTimeout(f"the prediction took longer than the server's limit of {seconds:g} s")


class Aborted(BaseException):
    """Raised in the model thread in a call that overran its deadline: not an Exception, so that
    neither the plugin nor the libraries it calls (MLflow's own scoring) can catch it."""


def _expire(signum, frame):
    raise Aborted()


@contextmanager
def alarm(seconds):
    """Raise :class:`Aborted` in the main thread when the block runs longer than ``seconds``.

    A SIGALRM timer: it interrupts Python code and sleeps (a C call is interrupted when it
    returns). The handler is installed once per process; each call arms and disarms the timer.
    """
    if signal.getsignal(signal.SIGALRM) is not _expire:
        signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class ModelThread:
    """Runs the plugin's calls one at a time, in a thread of their own; each caller waits at most its timeout.

    A call still queued when its caller gives up is never run; one that is running has
    :class:`Aborted` raised in it, which stops Python code at once (a C call or a sleep
    finishes first). Either way the caller is answered at its deadline.
    """

    def __init__(self, lock, name="model"):
        self.lock = lock  # held while a call runs
        self._calls = queue.SimpleQueue()
        self._running = None
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, fn, timeout):
        """``fn()``, run in the model thread; RequestTimeout after ``timeout`` seconds."""
        future = Future()
        self._calls.put((future, fn))
        try:
            return future.result(timeout)
        except TimeoutError:
            if not future.cancel():
                self._abort(future)
            raise too_slow(timeout) from None

    def _serve(self):
        while True:
            try:
                future, fn = self._calls.get()
                if not future.set_running_or_notify_cancel():
                    continue
                self._running = future
                try:
                    with self.lock:
                        result = fn()
                except BaseException as e:
                    self._running = None
                    if isinstance(e, Aborted):
                        logger.warning("a prediction was stopped at the request timeout")
                    future.set_exception(e)
                else:
                    self._running = None
                    future.set_result(result)
            except Aborted:  # it landed just after its call had ended
                continue

    def _abort(self, future):
        if self._running is future:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread.ident), ctypes.py_object(Aborted))


class Scorer:
    """A plugin and, once :meth:`load` has run, its model.

    With ``max_batch_size`` > 1 (a :class:`~.plugin.BatchPlugin`), concurrent requests share
    model calls through a :class:`~.batching.Batcher`, waiting up to ``max_batch_time_ms`` for
    each other. ``on_batch(size)`` is told how many requests each successful model call scored.
    """

    def __init__(self, plugin, timeout=None, max_batch_size=1, max_batch_time_ms=0, on_batch=None):
        self.plugin = plugin
        self.model = None
        self.timeout = timeout
        self.max_batch_size = max_batch_size
        self.max_batch_time_ms = max_batch_time_ms
        self.on_batch = on_batch or (lambda size: None)
        self.batcher = None
        self.model_thread = None  # runs the unbatched predictions of other threads, within the timeout
        self.model_lock = threading.Lock()  # one unbatched prediction at a time
        self.recent_seconds = None  # how long recent unbatched predictions took (moving average)
        self.ready = threading.Event()
        self.request_types = request_media_types(plugin)
        self.response_types = response_media_types(plugin)

    def load(self, model_uri):
        """Load the model with the plugin (may take long: call it off the serving thread)."""
        self.model = self.plugin.load_model(model_uri)
        if self.max_batch_size > 1:
            self.batcher = Batcher(partial(self.plugin.run_batch, self.model), self.max_batch_size,
                                   self.max_batch_time_ms / 1000, self.on_batch)
        elif self.timeout:
            self.model_thread = ModelThread(self.model_lock)
        self.ready.set()

    def example(self):
        """The plugin's :meth:`~.plugin.BasePlugin.example_request` for the loaded model, checked, or None."""
        method = getattr(self.plugin, "example_request", None)  # a plugin may not subclass BasePlugin
        if not self.ready.is_set() or not callable(method):
            return None
        try:
            example = method(self.model)
            if example is None:
                return None
            body, media_type = example
            if isinstance(body, str):
                body = body.encode()
            if not isinstance(body, bytes) or not isinstance(media_type, str):
                raise TypeError("must be (bytes, media type) or None")
        except Exception as e:  # an optional nicety: never a reason to fail
            logger.warning("%s.example_request cannot be used: %s: %s", type(self.plugin).__name__, type(e).__name__, e)
            return None
        return body, media_type

    def score(self, body, content_type, accept):
        """Score one request body; returns ``(response bytes, response media type)``.

        Raises :class:`ScoringError` with the status to answer: 503 while the model
        loads, 415 for a Content-Type the plugin does not take, 400 for an empty or
        malformed body, 406 when nothing in ``accept`` can be produced, 500 when the
        plugin fails, 504 when it takes longer than the timeout.
        """
        if not self.ready.is_set():
            raise NotReady("the model is still loading; retry shortly")
        media_type, params = check_content_type(content_type, self.request_types)
        if not body:
            raise InvalidInput("request body is empty")
        if media_type == JSON or media_type.endswith("+json"):  # whatever parses it: the plugin, pandas, MLflow
            check_json_containers(body)
        response_type = negotiate(accept, self.response_types)
        payload = Payload(body, media_type, params)
        if self.batcher:
            answer = self._encode(self._predict_batched(payload), response_type)
        else:
            answer = self._encode(self._predict_within_timeout(payload), response_type)
            self.on_batch(1)
        return answer, response_type

    def _predict_within_timeout(self, payload):
        """The main thread (the worker answering a request that arrived whole, or one command) predicts
        itself under a SIGALRM deadline; other threads hand the call to the model thread."""
        predict = partial(self._predict, payload)
        if not self.timeout:
            with self.model_lock:
                return predict()
        if threading.current_thread() is not threading.main_thread():
            return self.model_thread.call(predict, self.timeout)
        with self.model_lock:
            try:
                with alarm(self.timeout):
                    return predict()
            except Aborted:
                logger.warning("a prediction was stopped at the request timeout")
                raise too_slow(self.timeout) from None

    def _predict(self, payload):
        started = time.perf_counter()
        try:
            with self._plugin_errors(payload):
                return self.plugin.predict(self.model, payload)
        finally:  # one prediction at a time: no lock needed
            seconds = time.perf_counter() - started
            self.recent_seconds = seconds if self.recent_seconds is None else 0.8 * self.recent_seconds + 0.2 * seconds

    def _predict_batched(self, payload):
        """Preprocess here, share a model call with other requests, postprocess here; the timeout bounds the wait."""
        with self._plugin_errors(payload):
            future = self.batcher.submit(partial(self.plugin.preprocess, self.model, payload))
            try:
                output = future.result(timeout=self.timeout)
            except TimeoutError:
                future.cancel()  # if it is still waiting for a batch, it never runs
                raise too_slow(self.timeout) from None
            return self.plugin.postprocess(self.model, output)

    @contextmanager
    def _plugin_errors(self, payload):
        """Turn what a plugin raises into the error to answer: its own, 400 for a malformed body, else 500."""
        try:
            yield
        except ScoringError:
            raise
        except Exception as e:
            malformed = diagnose(payload)
            if malformed is not None:
                logger.info("plugin refused a malformed %s body: %s", payload.media_type, malformed.message)
                raise malformed from e
            logger.exception("plugin %s failed on a %s request", type(self.plugin).__name__, payload.media_type)
            raise ScoringError("the plugin failed to score this request; the server log has the details") from e

    def _encode(self, result, response_type):
        try:
            return encode(result, response_type)
        except ScoringError:
            raise
        except Exception as e:
            logger.exception("cannot encode the result of %s as %s", type(self.plugin).__name__, response_type)
            raise ScoringError(f"the prediction cannot be encoded as {response_type}; the server log has the details") from e
