"""The request path in one place: check the body, call the plugin, encode its answer.

No HTTP here (the web layer passes bytes and header values in, gets bytes and a
media type out), and no model details (the plugin owns those).
"""

import ctypes
import functools
import json
import logging
import queue
import signal
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial

from . import affinity
from .batching import Batcher
from .decoders import check_json_containers
from .errors import InvalidInput, NotReady, RequestTimeout, ScoringError
from .media import check_content_type, diagnose, encode, is_json, is_text, negotiate
from .models import model_version, pinned_uri
from .plugin import Payload, request_media_types, response_media_types

logger = logging.getLogger(__name__)

V2_METHODS = ("predict_v2", "preprocess_tensors", "predict_tensors")  # a plugin's own ways to take V2 tensors


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
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def call(self, fn, timeout):
        """``fn()``, run in the model thread; RequestTimeout after ``timeout`` seconds."""
        if self._closed:  # a request that held the scorer of a replaced version: rare, and not stopped at its timeout
            with self.lock:
                return fn()
        future = Future()
        self._calls.put((future, fn))
        try:
            return future.result(timeout)
        except TimeoutError:
            if not future.cancel():
                self._abort(future)
            raise too_slow(timeout) from None

    def close(self):
        """End the thread once the calls queued before are done; a later call runs in its caller's thread."""
        self._closed = True
        self._calls.put(None)

    def _serve(self):
        while True:
            try:
                call = self._calls.get()
                if call is None:
                    return
                future, fn = call
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
        self.model_uri = self.version = None  # the registry version loaded, for a models:/ URI
        self.response_types = response_media_types(plugin)

    def load(self, model_uri, version=None, load=None):
        """Load the model with the plugin (may take long: call it off the serving thread). ``version``: the
        registry version ``model_uri`` names, when the caller has looked it up; else it is looked up here.
        ``load``: what loads the model from its URI, by default the plugin's ``load_model``."""
        with affinity.loading():  # the library's own threads may use every CPU; ours join the worker's
            self.model = (load or self.plugin.load_model)(model_uri)
            self.model_uri = model_uri
            try:
                self.version = version or model_version(model_uri)
            except Exception as e:  # the registry went away after the load: the version stays unknown
                logger.warning("the registry version of %s is unknown: %s", model_uri, e)
            if self.max_batch_size > 1:
                self.batcher = Batcher(partial(self.plugin.run_batch, self.model), self.max_batch_size,
                                       self.max_batch_time_ms / 1000, self.on_batch)
            elif self.timeout:
                self.model_thread = ModelThread(self.model_lock)
        self.ready.set()

    def close(self):
        """Let the threads of a replaced model end; the requests that still hold this scorer finish with it."""
        if self.batcher:
            self.batcher.close()
        if self.model_thread:
            self.model_thread.close()

    @functools.cached_property
    def signature(self):
        """The model's MLflow signature (for V2 metadata): the plugin's ``signature(model)`` if it has one, else
        read from the model's MLmodel; None without one."""
        method = getattr(self.plugin, "signature", None)
        try:
            if callable(method):
                return method(self.model)
            from mlflow.models import get_model_info

            # The version loaded, not the one an alias or a stage points at now.
            uri = pinned_uri(self.model_uri, self.version) if self.version else self.model_uri
            return get_model_info(uri).signature
        except Exception as e:
            logger.warning("the signature of %s cannot be read: %s: %s", self.model_uri, type(e).__name__, e)
            return None

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
        if is_json(media_type):  # whatever parses it: the plugin, pandas, MLflow
            check_json_containers(body)
        response_type = negotiate(accept, self.response_types)
        payload = Payload(body, media_type, params)
        if self.batcher:
            answer = self._encode(self._predict_batched(partial(self.plugin.preprocess, self.model, payload), payload), response_type)
        else:
            answer = self._encode(self._predict_within_timeout(payload), response_type)
            self.on_batch(1)
        return answer, response_type

    @property
    def takes_tensors(self):
        """Whether the plugin reads V2 tensors itself; else :meth:`infer` takes one BYTES input of request bodies."""
        return any(callable(getattr(self.plugin, method, None)) for method in V2_METHODS)

    def infer(self, request):
        """Score an Open Inference Protocol request (a :class:`~.v2.InferenceRequest`); returns the model's answer
        (an array, a DataFrame, a dict of arrays, a list) for :func:`~.v2.from_model_output`.

        The plugin's own V2 method when it has one: ``predict_v2(model, request)`` (the whole request, as the
        pyfunc plugin takes it), ``preprocess_tensors(model, inputs, parameters)`` (a BatchPlugin: batched with
        every other request) or ``predict_tensors(model, inputs, parameters)``, where ``inputs`` maps each input's
        name to its array. Without any: each element of a single BYTES input is a request body, scored as
        ``/api/predict`` scores it, and their answers are joined.
        """
        if not self.ready.is_set():
            raise NotReady("the model is still loading; retry shortly")
        plugin, model = self.plugin, self.model
        inputs, parameters = {tensor.name: tensor.data for tensor in request.inputs}, request.params
        if callable(getattr(plugin, "predict_v2", None)):
            return self._unbatched(partial(plugin.predict_v2, model, request))
        if callable(getattr(plugin, "preprocess_tensors", None)):
            decode = partial(plugin.preprocess_tensors, model, inputs, parameters)
            if self.batcher:
                return self._predict_batched(decode)
            return self._unbatched(lambda: plugin.postprocess(model, plugin.run_batch(model, [decode()])[0]))
        if callable(getattr(plugin, "predict_tensors", None)):
            return self._unbatched(partial(plugin.predict_tensors, model, inputs, parameters))
        return self._infer_bodies(request)

    def _infer_bodies(self, request):
        """A plugin that declares no V2 method: each element of one BYTES input scored as a request body."""
        import numpy as np

        from .v2 import base64_or_raw

        bodies = request.inputs[0].data.reshape(-1) if len(request.inputs) == 1 and request.inputs[0].datatype == "BYTES" else None
        if bodies is None or not len(bodies):
            raise InvalidInput(f"plugin {type(self.plugin).__name__} takes V2 requests as one BYTES input holding request"
                               " bodies (it declares no predict_tensors)")
        media_type = self.body_media_type
        text = is_text(media_type)  # else strings in JSON are base64 (or the bytes themselves), as MLServer reads them
        payloads = [Payload(body if isinstance(body, bytes) else body.encode() if text else base64_or_raw("", body),
                            media_type, {}) for body in bodies]
        if self.batcher:  # every body queued at once: they share model calls
            futures = [self._submit(partial(self.plugin.preprocess, self.model, payload), payload) for payload in payloads]
            answers = [self._batch_result(future, payload) for future, payload in zip(futures, payloads)]
        else:
            answers = [self._unbatched(partial(self.plugin.predict, self.model, payload), payload) for payload in payloads]
        arrays = [np.asarray(self._body_answer(answer)) for answer in answers]
        return arrays[0] if len(arrays) == 1 else np.concatenate([a.reshape((1,) if a.ndim == 0 else a.shape) for a in arrays])

    @property
    def body_media_type(self):
        """The media type a V2 request body element is scored as: the plugin's first exact request type."""
        return next((t for t in self.request_types if "*" not in t), "application/octet-stream")

    def _body_answer(self, answer):
        """What ``predict`` answered a body, as V2 carries it: JSON text parsed (the 2020 contract), other text or
        bytes (an image, CSV) as one BYTES element."""
        import numpy as np

        if answer is None:
            logger.error("plugin %s returned None for a V2 request", type(self.plugin).__name__)
            raise ScoringError("the plugin answered nothing; the server log has the details")
        if isinstance(answer, (str, bytes, bytearray)):
            try:
                return json.loads(answer)
            except ValueError:  # not JSON, or not UTF-8
                return np.array([bytes(answer) if not isinstance(answer, str) else answer], dtype=object)
        return answer

    def _unbatched(self, call, payload=None):
        """One model call for one request within the timeout, counted as a batch of one."""
        answer = self._within_timeout(partial(self._timed, call, payload))
        self.on_batch(1)
        return answer

    def _predict_within_timeout(self, payload):
        return self._within_timeout(partial(self._timed, partial(self.plugin.predict, self.model, payload), payload))

    def _within_timeout(self, predict):
        """The main thread (the worker answering a request that arrived whole, or one command) predicts
        itself under a SIGALRM deadline; other threads hand the call to the model thread."""
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

    def _timed(self, call, payload=None):
        started = time.perf_counter()
        try:
            with self._plugin_errors(payload):
                return call()
        finally:  # one prediction at a time: no lock needed
            seconds = time.perf_counter() - started
            self.recent_seconds = seconds if self.recent_seconds is None else 0.8 * self.recent_seconds + 0.2 * seconds

    def _predict_batched(self, decode, payload=None):
        """Preprocess here, share a model call with other requests, postprocess here; the timeout bounds the wait."""
        return self._batch_result(self._submit(decode, payload), payload)

    def _submit(self, decode, payload):
        with self._plugin_errors(payload):
            return self.batcher.submit(decode)

    def _batch_result(self, future, payload):
        with self._plugin_errors(payload):
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
            malformed = diagnose(payload) if payload is not None else None
            if malformed is not None:
                logger.info("plugin refused a malformed %s body: %s", payload.media_type, malformed.message)
                raise malformed from e
            logger.exception("plugin %s failed on a %s request", type(self.plugin).__name__,
                             payload.media_type if payload is not None else "V2")
            raise ScoringError("the plugin failed to score this request; the server log has the details") from e

    def _encode(self, result, response_type):
        try:
            return encode(result, response_type)
        except ScoringError:
            raise
        except Exception as e:
            logger.exception("cannot encode the result of %s as %s", type(self.plugin).__name__, response_type)
            raise ScoringError(f"the prediction cannot be encoded as {response_type}; the server log has the details") from e
