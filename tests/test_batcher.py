"""Units of the batcher (batching.Batcher): merging, failures kept to their own requests, a thread that survives.

The served path, with real models and plugins, is tested in test_batching.py.
"""

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlflow_pluggable_scoring_server.batching import Batcher


def doubled(inputs):
    return [2 * x for x in inputs]


def submit_all(batcher, values):
    """Submit every value from its own thread at once; the futures' results (or exceptions) in order."""
    start = threading.Barrier(len(values))

    def one(value):
        start.wait()
        future = batcher.submit(lambda: value)
        try:
            return future.result(timeout=10)
        except Exception as e:
            return e

    with ThreadPoolExecutor(len(values)) as pool:
        return list(pool.map(one, values))


def test_each_input_gets_its_own_output_and_inputs_are_merged():
    sizes = []
    batcher = Batcher(doubled, max_size=8, max_wait_seconds=0.05, on_batch=sizes.append)
    assert submit_all(batcher, list(range(16))) == [2 * x for x in range(16)]
    assert sum(sizes) == 16 and max(sizes) > 1


def test_a_failing_metrics_callback_loses_no_answer_and_the_batcher_lives_on():
    def broken_metrics(size):
        raise RuntimeError("metrics backend gone")

    batcher = Batcher(doubled, max_size=4, max_wait_seconds=0.01, on_batch=broken_metrics)
    assert submit_all(batcher, [1, 2, 3]) == [2, 4, 6]
    assert batcher.submit(lambda: 5).result(timeout=10) == 10  # the thread survived


def test_a_run_batch_returning_too_few_outputs_fails_only_that_batch():
    calls = []

    def short_then_right(inputs):
        calls.append(len(inputs))
        return [] if len(calls) == 1 else doubled(inputs)

    batcher = Batcher(short_then_right, max_size=1, max_wait_seconds=0)
    with pytest.raises(ValueError, match="returned 0 outputs for 1 inputs"):
        batcher.submit(lambda: 1).result(timeout=10)
    assert batcher.submit(lambda: 4).result(timeout=10) == 8


def test_a_decode_error_is_raised_to_its_caller_and_queues_nothing():
    batcher = Batcher(doubled, max_size=4, max_wait_seconds=0.01)

    def broken():
        raise ValueError("not decodable")

    with pytest.raises(ValueError, match="not decodable"):
        batcher.submit(broken)
    assert batcher.submit(lambda: 3).result(timeout=10) == 6


def clients_in_a_loop(batcher, starts, seconds):
    """Each client (one per start delay) submits, waits for its answer, and submits again after 0.5 ms (its answer's
    way back and its next request's way in), decoding each request in 0.3 ms; the latency of every request."""
    stop = time.monotonic() + seconds
    latencies = []

    def decode():
        time.sleep(0.0003)
        return 1

    def client(delay):
        time.sleep(delay)
        while time.monotonic() < stop:
            started = time.monotonic()
            batcher.submit(decode).result(timeout=10)
            latencies.append(time.monotonic() - started)
            time.sleep(0.0005)

    threads = [threading.Thread(target=client, args=(delay,)) for delay in starts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def a_model_of_10_ms(inputs):
    time.sleep(0.01)
    return inputs


def test_clients_in_two_halves_are_merged_into_whole_batches():
    """8 clients, 4 of them starting while the first 4 are scored: each half arrives while the other's batch runs.
    Batches of 4 would take turns for ever; the batcher waits (at most max_wait) for the half it just answered,
    and the batches hold all 8 (4 each before, half the requests per second)."""
    sizes = []
    batcher = Batcher(a_model_of_10_ms, max_size=16, max_wait_seconds=0.005, on_batch=sizes.append)
    clients_in_a_loop(batcher, [0] * 4 + [0.005] * 4, seconds=0.6)
    assert statistics.median(sizes[-10:]) >= 7, sizes  # a client late for one batch (a busy machine) is no failure


def test_a_lone_client_never_waits_for_others():
    """One client: nothing waits behind its batches, so the batcher never waits for more (here up to 50 ms)."""
    sizes = []
    batcher = Batcher(a_model_of_10_ms, max_size=16, max_wait_seconds=0.05, on_batch=sizes.append)
    latencies = clients_in_a_loop(batcher, [0], seconds=0.3)
    assert set(sizes) == {1}
    assert max(latencies) < 0.04, latencies


def test_after_a_wait_for_returning_clients_that_brought_none_the_next_batch_does_not_wait():
    """A request queued behind a batch waits (up to max_wait) for that batch's client to send again; clients that
    do not (here: each request comes once) cost that wait once, not at every batch."""
    def a_model_of_20_ms(inputs):
        time.sleep(0.02)
        return inputs

    batcher = Batcher(a_model_of_20_ms, max_size=16, max_wait_seconds=0.1)
    latencies = {}

    def one(name):
        started = time.monotonic()
        batcher.submit(lambda: name).result(timeout=10)
        latencies[name] = time.monotonic() - started

    threads, started = [], time.monotonic()
    # A is scored from 0 to 20 ms; B, queued behind it, waits for A's client until 120 ms and is scored until
    # 140 ms; C comes while B is scored and is queued behind it.
    for name, at in (("A", 0), ("B", 0.005), ("C", 0.125)):
        time.sleep(max(at - (time.monotonic() - started), 0))
        threads.append(threading.Thread(target=one, args=(name,)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    assert latencies["B"] >= 0.1, latencies  # B waited for A's client, which never came back
    assert latencies["C"] < 0.08, latencies  # C did not wait for B's
