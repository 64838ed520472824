"""Keeps a worker's Python threads on one CPU (the ``cpu_affinity`` setting).

A CPython process runs Python code on one CPU at a time: its threads take turns holding the
interpreter's lock. Left to the kernel, the threads of a worker (the main thread, the request
threads, the batcher, the model thread) each run wherever a CPU is free, so a turn handed from one
to the next may move the interpreter's working set from one CPU's caches to another's. On this
project's benchmark machine that made a forest's model call cost 8.2 ms of CPU in a worker whose
requests were batched by other threads, against about 5 ms alone; with the worker's Python threads
on one CPU, the batched forest answered 619 requests a second at 8 connections instead of 178
(``bench/README.md``). Requests answered by the main thread alone gain nothing, and lose nothing.

Worker ``n`` takes the CPU fewest of its running siblings use, from those the server may run on.
Every few seconds it checks that other processes (another server's workers, a noisy neighbour)
do not take its CPU: if they took more of it than another CPU had idle, it moves there (at even
odds at each check, so that workers crowding one CPU do not all move together).
Threads that model libraries start for their own work (ONNX Runtime's, TensorFlow's, OpenMP's)
run outside the lock and keep every CPU: a model loads with its thread unpinned. Nothing is pinned
when the server has one CPU, or when its CPUs are shared under a quota smaller than their number
(a container given 2 CPUs' time on a 64-CPU node): there, a fixed CPU may be another container's
busiest.
"""

import contextlib
import os
import random
import threading
import time
from pathlib import Path

REBALANCE_SECONDS = 2.0  # how often a pinned worker checks that its CPU is not taken by others (plus up to 50%)
BETTER_BY = 0.25  # the share of a CPU another must offer beyond the worker's own to move to it

_cpu = None  # the CPU this worker's Python threads run on; None: not pinned
_allowed = None  # the CPUs the worker could run on before it was pinned
_loading = set()  # the threads loading a model now, left on every CPU
_last = None  # (monotonic time, this process's CPU seconds, cpu_times()) at the last rebalance check
_next_check = 0.0  # when rebalance checks next (monotonic time)


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
            mounts = dict.fromkeys((root / controllers, root / "cpu"))  # "cpu" alone is named once
            # In a container, its own group is the mount.
            for folder in dict.fromkeys(f for mount in mounts for f in (mount / path.lstrip("/"), mount)):
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


def siblings(master):
    """The pids of ``master``'s other children (the other workers), from /proc; [] when they cannot be read."""
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in children if int(pid) != os.getpid()]


def siblings_cpus(master):
    """The CPU of each other worker of ``master`` whose main thread is pinned to one."""
    cpus = []
    for pid in siblings(master):
        try:
            allowed = os.sched_getaffinity(pid)
        except OSError:  # it ended meanwhile
            continue
        if len(allowed) == 1:
            cpus.extend(allowed)
    return cpus


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
    for cpu in siblings_cpus(master):
        if cpu in used:
            used[cpu] += 1
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


def cpu_times(stat=Path("/proc/stat")):
    """Per CPU number: (busy, idle) seconds since boot."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            idle = values[3] + values[4]
            times[int(name[3:])] = ((sum(values) - idle) / tick, idle / tick)
    return times


def better_cpu(cpu, allowed, seconds, ours, before, after):
    """The CPU to move to, or None: over ``seconds``, in which this process used ``ours`` seconds of CPU and the
    CPUs' (busy, idle) seconds went from ``before`` to ``after``, the allowed CPU idle the longest, if it offered
    more than ``BETTER_BY`` of a CPU beyond what others left of ``cpu``."""
    if cpu not in before or cpu not in after or seconds <= 0:
        return None
    others = (after[cpu][0] - before[cpu][0] - ours) / seconds  # what other processes took of ours (at most)
    idle = {c: (after[c][1] - before[c][1]) / seconds for c in allowed if c != cpu and c in before and c in after}
    best = max(idle, key=idle.get, default=None)
    if best is None or idle[best] <= (1 - others) + BETTER_BY:
        return None
    return best


def rebalance(now=None):
    """In a pinned worker (call it often; it acts every ``REBALANCE_SECONDS`` or so): move its Python threads to
    :func:`better_cpu`, if there is one. Returns the CPU moved to, or None."""
    global _last, _next_check
    if _cpu is None:
        return None
    now = time.monotonic() if now is None else now
    if now < _next_check:
        return None
    _next_check = now + REBALANCE_SECONDS * (1 + random.random() / 2)  # drawn once a check: workers apart
    used = os.times()
    current = (now, used.user + used.system, cpu_times())
    last, _last = _last, current
    if last is None:
        return None
    free = set(_allowed) - set(siblings_cpus(os.getppid()))  # never onto another worker's CPU (the master's child)
    best = better_cpu(_cpu, free, now - last[0], current[1] - last[1], last[2], current[2])
    # Workers crowding one CPU all see it at once: each moves at half the odds, else all would swap together.
    if best is None or random.random() < 0.5:
        return None
    pin(best)
    return best
