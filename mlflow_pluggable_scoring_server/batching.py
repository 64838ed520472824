"""Adaptive batching: requests arriving together in one worker share one model call.

Request threads decode their own body through :meth:`Batcher.submit`; one batcher thread
per worker takes up to ``max_batch_size`` inputs, runs them through the model at once and
hands each request its own output through a future. After the first input arrived it waits
for others at most ``max_batch_time_ms``, and only while other requests are still being
decoded: a request alone is scored at once, not after the wait. When requests had to wait
behind the last batch (the model is the bottleneck), it also waits, as long at most, for the
clients that batch just answered to send again: else clients split into two halves whose
batches take turns, each half the size it could be. A batch that fails is run
again one input at a time, so that only the requests whose input fails get an error.
"""

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

from .errors import StartupError
from .plugin import is_batchable

logger = logging.getLogger(__name__)


def batch_settings(settings, plugin):
    """``settings`` with ``max_batch_size`` and ``max_batch_time_ms`` resolved: conf/flags, else the plugin's, else off.

    Raises :class:`StartupError` when batching is asked of a plugin that cannot batch, or a value is invalid.
    """
    size = settings.max_batch_size if settings.max_batch_size is not None else getattr(plugin, "max_batch_size", 1)
    wait = settings.max_batch_time_ms if settings.max_batch_time_ms is not None else getattr(plugin, "max_batch_time_ms", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise StartupError(f"max_batch_size must be a whole number of at least 1, not {size!r}")
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 <= wait <= 60_000:
        raise StartupError(f"max_batch_time_ms must be a number of milliseconds from 0 to 60000, not {wait!r}")
    if size > 1 and not is_batchable(plugin):
        raise StartupError(f"max_batch_size is {size} but plugin {type(plugin).__name__} cannot batch:"
                           " it must subclass BatchPlugin (preprocess and inference)")
    return settings.model_copy(update={"max_batch_size": size, "max_batch_time_ms": wait})


class Batcher:
    """Merges the inputs submitted by concurrent threads into calls of ``run_batch(inputs) -> outputs``.

    ``on_batch(size)`` is told the size of every model call that answered.
    """

    def __init__(self, run_batch, max_size, max_wait_seconds, on_batch=None):
        self.run_batch = run_batch
        self.max_size = max_size
        self.max_wait = max_wait_seconds
        self.on_batch = on_batch or (lambda size: None)
        self._waiting = deque()  # (arrival time, input, future)
        self._decoding = 0  # requests in submit's decode() that have not queued their input yet
        self._arrived = threading.Condition()
        self._closed = False
        self._last_size = 0  # requests in the last batch, when others waited behind it; else 0
        self._fruitless = False  # the last wait for a batch's clients to send again brought none
        self._thread = threading.Thread(target=self._serve, name="batcher", daemon=True)
        self._thread.start()

    def close(self):
        """Let the batcher thread end once nothing is queued or decoding (the model of a replaced version goes)."""
        with self._arrived:
            self._closed = True
            self._arrived.notify()

    def submit(self, decode):
        """Queue the input ``decode()`` returns; the future gets its output, or the exception scoring it alone raised.

        What ``decode`` raises is raised here, and nothing is queued.
        """
        with self._arrived:
            self._decoding += 1
        try:
            item = decode()
            if self._closed and not self._thread.is_alive():  # a request that came just after its close: alone
                self._queue()
                future = Future()
                future.set_running_or_notify_cancel()
                self._score([(item, future)])
                return future
        except BaseException:
            self._queue()
            raise
        future = Future()
        self._queue((time.monotonic(), item, future))
        return future

    def _queue(self, *entries):
        """One decoding request fewer, with its input if it has one; wake the batcher to reconsider."""
        with self._arrived:
            self._decoding -= 1
            self._waiting.extend(entries)
            self._arrived.notify()

    def _serve(self):
        while True:  # this thread must outlive anything a batch raises: every later request waits on it
            waiting = self._next_batch()
            if waiting is None:  # closed, and nothing left
                return
            batch = [(item, future) for _, item, future in waiting if future.set_running_or_notify_cancel()]
            try:
                if batch:  # all cancelled (their requests timed out) is possible
                    self._score(batch)
                with self._arrived:
                    self._last_size = len(batch) if self._waiting else 0
            except Exception as e:
                logger.exception("the batcher failed outside the model call")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)

    def _next_batch(self):
        """Wait for a first input, then for up to ``max_size`` of them until ``max_wait`` after the first
        arrived, as long as some request is still decoding: no other input is on its way otherwise."""
        with self._arrived:
            self._arrived.wait_for(lambda: self._waiting or self._closed and not self._decoding)
            if not self._waiting:
                return None
            until = self._waiting[0][0] + self.max_wait
            while (len(self._waiting) < self.max_size and self._decoding
                   and self._arrived.wait(max(until - time.monotonic(), 0))):
                pass
            if self._last_size and not self._fruitless:
                # Requests waited behind the last batch: its clients, answered a moment ago, are likely to send
                # again at once. Wait for them too, at most max_wait, so that two halves of the clients do not
                # take turns with half-size batches. Clients that do not come back (new connections each time,
                # other workers' clients) cost one such wait in two: after one that brought none, none.
                before = len(self._waiting)
                expected = min(self.max_size, self._last_size + before)
                until = time.monotonic() + self.max_wait
                while len(self._waiting) < expected and self._arrived.wait(max(until - time.monotonic(), 0)):
                    pass
                self._fruitless = len(self._waiting) == before
            else:
                self._fruitless = False
            return [self._waiting.popleft() for _ in range(min(self.max_size, len(self._waiting)))]

    def _score(self, batch):
        try:
            outputs = self.run_batch([item for item, _ in batch])
            if len(outputs) != len(batch):
                raise ValueError(f"run_batch returned {len(outputs)} outputs for {len(batch)} inputs")
        except Exception as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            logger.warning("a batch of %d failed (%s); scoring its requests one by one", len(batch), type(e).__name__)
            for one in batch:
                self._score([one])
            return
        for (_, future), output in zip(batch, outputs):
            future.set_result(output)
        try:
            self.on_batch(len(batch))
        except Exception:  # the answers are out; a metric lost is only logged
            logger.exception("on_batch failed")
