"""Keeps a worker's Python threads on one CPU (the ``cpu_affinity`` setting).

A CPython process runs Python code on one CPU at a time: its threads take turns holding the
interpreter's lock. Left to the kernel, the threads of a worker (the main thread, the request
threads, the batcher, the model thread) each run wherever a CPU is free, so a turn handed from one
to the next may move the interpreter's working set from one CPU's caches to another's. On this
project's benchmark machine that made a forest's model call cost 8.3 ms of CPU in a worker whose
requests were batched by other threads, against 5.2 ms alone; with the worker's Python threads on
one CPU, it cost 5.2 ms again, and the batched forest answered 595 requests a second instead of 179
(``bench/README.md``). Requests answered by the main thread alone gain nothing, and lose nothing.

Worker ``n`` takes the CPU fewest of its running siblings use, from those the server may run on.
Threads that model libraries start for their own work (ONNX Runtime's, TensorFlow's, OpenMP's)
run outside the lock and keep every CPU: a model loads with its thread unpinned. Nothing is pinned
when the server has one CPU, or when its CPUs are shared under a quota smaller than their number
(a container given 2 CPUs' time on a 64-CPU node): there, a fixed CPU may be another container's
busiest.
"""

import contextlib
import os
import threading
from pathlib import Path

_cpu = None  # the CPU this worker's Python threads run on; None: not pinned
_allowed = None  # the CPUs the worker could run on before it was pinned
_loading = set()  # the threads loading a model now, left on every CPU


def cpu_quota(root=Path("/sys/fs/cgroup"), cgroup_file=Path("/proc/self/cgroup")):
    """The CPUs' worth of time this process's control group may use (cgroup v2 ``cpu.max`` or v1's CFS quota, the
    smallest along its path), or None without a quota."""
    quotas = []
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the quota may be set on any ancestor
            folder = root / path.lstrip("/")
            for parent in (folder, *folder.parents):
                if parent == root.parent:
                    break
                quotas.append(_read_quota(parent / "cpu.max"))
        elif "cpu" in controllers.split(","):
            for mount in (root / controllers, root / "cpu"):
                for folder in (mount / path.lstrip("/"), mount):  # in a container, its own group is the mount
                    quotas.append(_read_quota(folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"))
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _read_quota(path, period_path=None):
    try:
        if period_path is None:  # v2: "max 100000" or "200000 100000"
            quota, period = path.read_text().split()[:2]
        else:  # v1: -1, or microseconds per period
            quota, period = path.read_text().strip(), period_path.read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1"):
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def threads_cpus(pid):
    """The CPUs the main thread of process ``pid`` may run on, or None if it is gone."""
    try:
        return os.sched_getaffinity(pid)
    except OSError:
        return None


def siblings(master):
    """The pids of ``master``'s other children (the other workers), from /proc; [] when they cannot be read."""
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in children if int(pid) != os.getpid()]


def choose_cpu(index, master, allowed=None, quota=None):
    """The CPU worker ``index`` (1 for the first) should run on, or None when it should not be pinned.

    Of the CPUs in ``allowed`` (by default those this process may run on), the one used by the fewest of the
    other workers already pinned to one CPU; among those, the ``index``-th in turn, so that workers starting
    together spread out.
    """
    if not hasattr(os, "sched_setaffinity"):  # not Linux
        return None
    allowed = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    quota = cpu_quota() if quota is None else quota
    if len(allowed) < 2 or (quota is not None and quota < len(allowed)):
        return None
    used = {cpu: 0 for cpu in allowed}
    for pid in siblings(master):
        cpus = threads_cpus(pid)
        if cpus and len(cpus) == 1 and next(iter(cpus)) in used:
            used[next(iter(cpus))] += 1
    fewest = min(used.values())
    free = [cpu for cpu in allowed if used[cpu] == fewest]
    return free[(index - 1) % len(free)]


def pin(cpu):
    """Run every Python thread of this process, and the threads they start from now on, on ``cpu``."""
    global _cpu, _allowed
    if _allowed is None:
        _allowed = os.sched_getaffinity(0)
    _cpu = cpu
    _pin_threads()


def _pin_threads():
    # In a forked worker the main thread keeps the native id of the master's: its own is the process id.
    # Only this process's own threads are ever pinned.
    ours = {int(tid) for tid in os.listdir("/proc/self/task")}
    for thread in threading.enumerate():
        tid = os.getpid() if thread is threading.main_thread() else thread.native_id
        if tid in ours and tid not in _loading:
            try:
                os.sched_setaffinity(tid, {_cpu})
            except OSError:  # it ended meanwhile
                pass


@contextlib.contextmanager
def loading():
    """Around a model's load in a pinned worker: the loading thread may use every CPU meanwhile, so that the
    threads a library starts for the model keep them all; afterwards the Python threads the load started (a
    batcher, a model thread) join the others on the worker's CPU. Nothing happens in a worker not pinned."""
    if _cpu is None:
        yield
        return
    me = threading.get_native_id()
    _loading.add(me)
    os.sched_setaffinity(0, _allowed)
    try:
        yield
    finally:
        _loading.discard(me)
        _pin_threads()
