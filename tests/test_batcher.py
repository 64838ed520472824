"""Units of the batcher (batching.Batcher): merging, failures kept to their own requests, a thread that survives.

The served path, with real models and plugins, is tested in test_batching.py.
"""

import threading
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
