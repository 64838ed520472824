"""An exclusive lock between processes whose lock file does not outlive it."""

import contextlib
import fcntl
import os


@contextlib.contextmanager
def exclusive_lock(path, waiting=None):
    """Hold an exclusive ``flock`` on the file ``path`` (created if needed); remove the file on release.

    ``waiting`` is called once if another process holds the lock. The file is removed while
    still locked, so a process that was waiting on it then holds a lock on a file no longer at
    ``path``: it checks that the file it locked is still the one there, else starts over on a
    new one, and no two processes ever hold the lock at once.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    waiting()
                    waiting = None
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
            if current:
                try:
                    yield
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                return
        finally:
            os.close(fd)  # releases the lock
