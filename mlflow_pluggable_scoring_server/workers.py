"""The gunicorn worker: gunicorn's sync worker that serves its backlog before a graceful exit.

On SIGTERM gunicorn's sync worker finishes the request in hand and exits. Connections
that the kernel had already accepted into the shared listening socket's backlog would
then be reset when the last worker closes it: requests the client saw accepted, lost.
This worker drains them first, within gunicorn's ``graceful_timeout``.
"""

import errno
import time

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
