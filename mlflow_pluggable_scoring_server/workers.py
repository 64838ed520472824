"""The gunicorn workers: gunicorn's sync and threaded workers, serving their backlog before a graceful exit.

On SIGTERM gunicorn's workers finish the requests in hand and exit. Connections that the
kernel had already accepted into the shared listening socket's backlog would then be reset
when the last worker closes it: requests the client saw accepted, lost. These workers serve
them first, within gunicorn's ``graceful_timeout``. The sync worker serves one request at a
time (no batching); the threaded one serves many at once, for batching.

Also gunicorn's logger, made to skip the access-log line unless it will be written.
"""

import errno
import logging
import time

from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

NOT_WAITING = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED)


class DrainingSyncWorker(SyncWorker):
    def run(self):
        super().run()
        if self.is_parent_alive():
            self.drain()

    def drain(self):
        deadline = time.monotonic() + self.cfg.graceful_timeout
        served = True
        while served and time.monotonic() < deadline:
            served = False
            for listener in self.sockets:
                try:
                    self.accept(listener)
                    served = True
                except OSError as e:
                    if e.errno not in NOT_WAITING:
                        raise


class DrainingThreadWorker(ThreadWorker):
    """The threaded worker waits for the connections it holds; this one first takes in the backlog too."""

    def set_accept_enabled(self, enabled):
        # Called with False when the worker stops accepting: on shutdown (not alive), or when it
        # holds worker_connections connections (alive; the backlog is then served later).
        if not enabled and not self.alive:
            self.drain()
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:  # from now on, a new connection is refused, not accepted and lost
                listener.close()

    def drain(self):
        """Hand every connection waiting in the backlog to the thread pool, as a running worker does."""
        for listener in self.sockets:
            taken = None
            while taken != self.nr_conns:  # accept() counts each connection it takes; none left: no change
                taken = self.nr_conns
                self.accept(listener)


class QuietAccessLogger(Logger):
    """gunicorn's logger, but an access line is only formatted when the access log takes it.

    With a logging config gunicorn formats every request's line, then drops it below INFO:
    a few percent of a small request's time.
    """

    def access(self, resp, req, environ, request_time):
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)
