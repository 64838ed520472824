"""Which CPU a worker's Python threads are kept on (affinity.py); the worker processes themselves: test_lifecycle.py."""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, TWO_CPUS, WINE_ONNX

from mlflow_pluggable_scoring_server import affinity


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "200000 100000\n"}, 2.0),
    ({"cpu.max": "max 100000\n", "pod/cpu.max": "150000 100000\n", "pod/box/cpu.max": "max 100000\n"}, 1.5),
    ({"cpu.max": "400000 100000\n", "pod/box/cpu.max": "100000 50000\n"}, 2.0),
    ({}, None),
], ids=["v2 no quota", "v2 quota", "v2 quota on an ancestor", "v2 smallest along the path", "no files"])
def test_cpu_quota_of_cgroup_v2(tmp_path, files, expected):
    for name, text in files.items():
        write(tmp_path / "cgroup" / name, text)
    write(tmp_path / "proc-cgroup", "0::/pod/box\n")
    assert affinity.cpu_quota(tmp_path / "cgroup", tmp_path / "proc-cgroup") == expected


@pytest.mark.parametrize("quota, expected", [("-1", None), ("50000", 0.5), ("300000", 3.0)])
def test_cpu_quota_of_cgroup_v1(tmp_path, quota, expected):
    # In a container, its own group is mounted at the controller's folder.
    write(tmp_path / "cgroup" / "cpu,cpuacct" / "cpu.cfs_quota_us", quota + "\n")
    write(tmp_path / "cgroup" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    write(tmp_path / "proc-cgroup", "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert affinity.cpu_quota(tmp_path / "cgroup", tmp_path / "proc-cgroup") == expected


def test_workers_spread_over_the_cpus_in_turn():
    master = os.getpid()  # with no child pinned: the index alone decides
    assert [affinity.choose_cpu(i, master, {2, 5, 7}, quota=None) for i in (1, 2, 3, 4)] == [2, 5, 7, 2]


@pytest.mark.parametrize("allowed, quota", [({3}, None), ({0, 1, 2, 3}, 2.0), ({0, 1}, 1.5)],
                         ids=["one CPU", "a quota of 2 CPUs for 4", "a quota of 1.5 for 2"])
def test_no_pinning_with_one_cpu_or_shared_cpus(allowed, quota):
    assert affinity.choose_cpu(1, os.getpid(), allowed, quota) is None


def test_a_quota_as_large_as_the_cpus_still_pins():
    assert affinity.choose_cpu(2, os.getpid(), {0, 1}, quota=2.0) == 1


@TWO_CPUS
def test_a_replacement_takes_the_cpu_fewest_siblings_use():
    """Children of this process stand for the other workers: one kept on the first CPU, one free to use any."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    pinned, free = subprocess.Popen(["sleep", "30"]), subprocess.Popen(["sleep", "30"])
    os.sched_setaffinity(pinned.pid, {cpus[0]})
    try:
        assert affinity.siblings_cpus(os.getpid()) == [cpus[0]]  # what rebalance() never moves to, too
        # Worker 1 would take the first CPU in turn; the sibling there sends it (and worker 3) to the second.
        assert [affinity.choose_cpu(i, os.getpid(), set(cpus), quota=None) for i in (1, 3)] == [cpus[1], cpus[1]]
    finally:
        for child in (pinned, free):
            child.kill()
            child.wait()


# The ONNX sample with a pool of two threads, so that ONNX Runtime starts one thread of its own as the model loads
# (the sample asks for one thread: none; the thread importing onnxruntime starts exists on some machines only).
TWO_THREAD_ONNX_PLUGIN = """
import importlib.util

import onnxruntime

from mlflow_pluggable_scoring_server.models import read_model

spec = importlib.util.spec_from_file_location("onnx_sample", {sample!r})
sample = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sample)


class Plugin(sample.Plugin):
    def load_model(self, model_uri):
        model = read_model(model_uri)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 2
        session = onnxruntime.InferenceSession(model.flavor_file("onnx"), options, providers=["CPUExecutionProvider"])
        return sample.WineSession(session, session.get_inputs()[0].name, model.input_names(), None)
"""


@TWO_CPUS
def test_a_model_loaded_by_a_pinned_worker_keeps_its_library_threads_on_every_cpu(tmp_path):
    """In a process pinned as a worker is, a model loads with its thread free: ONNX Runtime's own threads keep every
    CPU, and the Python threads the load starts (the model thread) join the worker's CPU."""
    plugin = tmp_path / "two_threads.py"
    plugin.write_text(TWO_THREAD_ONNX_PLUGIN.format(sample=str(WINE_ONNX / "plugin.py")))
    script = textwrap.dedent(f"""
        import os, threading
        import onnxruntime  # before counting: only the threads the model's load starts are new
        from mlflow_pluggable_scoring_server import affinity
        from mlflow_pluggable_scoring_server.plugin import load_file_plugin
        from mlflow_pluggable_scoring_server.scoring import Scorer

        everything = os.sched_getaffinity(0)
        cpu = min(everything)
        affinity.pin(cpu)
        before = set(os.listdir("/proc/self/task"))
        scorer = Scorer(load_file_plugin({str(plugin)!r}), timeout=60)
        scorer.load({str(WINE_ONNX / 'model')!r})
        python = {{str(t.native_id) for t in threading.enumerate()}} | {{str(os.getpid())}}
        new = set(os.listdir("/proc/self/task")) - before
        def cpus(tid):
            return os.sched_getaffinity(int(tid))
        print("python pinned", all(cpus(t) == {{cpu}} for t in python & set(os.listdir("/proc/self/task"))))
        print("model thread is new", any(t.name == "model" and str(t.native_id) in new for t in threading.enumerate()))
        print("library threads", len(new - python), "on every CPU", all(cpus(t) == everything for t in new - python))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "python pinned True" in lines
    assert "model thread is new True" in lines
    assert "library threads 1 on every CPU True" in lines, lines


def test_cpu_times_are_read_per_cpu(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  500 0 300 1500 100 0 0 0 0 0\ncpu0 200 0 100 700 50 0 0 0 0 0\n"
                    "cpu1 300 0 200 800 50 10 0 0 0 0\nintr 12345\nctxt 999\n")
    tick = os.sysconf("SC_CLK_TCK")
    assert affinity.cpu_times(stat) == {0: (300 / tick, 750 / tick), 1: (510 / tick, 850 / tick)}
    assert os.sched_getaffinity(0) <= set(affinity.cpu_times())  # this machine's own


def seconds(busy_idle):
    return {cpu: (busy, 2.0 - busy) for cpu, busy in busy_idle.items()}


@pytest.mark.parametrize("ours, busy_after, expected", [
    (1.9, {0: 1.95, 1: 0.8}, None),  # the worker itself keeps CPU 0 busy, the other is half idle: stay
    (0.6, {0: 2.0, 1: 0.2}, 1),  # another process took 1.4 s of the worker's 2 s, the other CPU was idle: move
    (0.0, {0: 2.0, 1: 1.9}, None),  # an idle worker beside a busy process, but the other CPU is as busy: stay
    (0.0, {0: 2.0, 1: 0.0, 2: 1.0}, 1),  # the idlest of the others
], ids=["busy with itself", "crowded out", "nowhere better", "the idlest"])
def test_a_worker_moves_only_to_a_cpu_that_offers_more(ours, busy_after, expected):
    before = {cpu: (0.0, 0.0) for cpu in busy_after}
    assert affinity.better_cpu(0, set(busy_after), 2.0, ours, before, seconds(busy_after)) == expected


def test_rebalance_acts_only_in_a_pinned_worker_and_reads_the_machine():
    assert affinity.rebalance() is None  # this process is not pinned
    script = textwrap.dedent("""
        import os
        from mlflow_pluggable_scoring_server import affinity
        cpu = min(os.sched_getaffinity(0))
        affinity.pin(cpu)
        first = affinity.rebalance(now=100.0)  # the first check only takes a sample
        soon = affinity.rebalance(now=100.5)  # too soon for another
        later = affinity.rebalance(now=104.0)  # reads /proc again; moves or not, to an allowed CPU
        print(first, soon, later is None or later in affinity._allowed, affinity._cpu in affinity._allowed)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.stdout.split() == ["None", "None", "True", "True"], out.stderr[-2000:]
