"""bench/run.py --smoke, as the README runs it: the harness starts each server in each of its request forms,
loads them and writes its table.

Not a benchmark: the numbers of a 1 s load on a shared CI machine only have to be sane.
"""

import re
import shlex
import subprocess

import pytest

from conftest import ROOT

# The smoke run's rows: ours on its own route and over V2, MLflow fed both its forms (the second on a copy of
# the model with a tensor signature, made by the harness).
SMOKE_ROWS = {"ours", "ours, V2 JSON", "ours, V2 binary", "MLflow, dataframe_split", "MLflow, inputs"}


def readme_bench_command():
    """The README's smoke run (the ```bash block marked ``<!-- test: bench -->``)."""
    from test_readme import readme_commands

    (command,) = readme_commands("bench")
    return shlex.split(command)


@pytest.mark.slow
def test_smoke_benchmark_writes_every_form_of_each_server(sample_models, tmp_path):
    argv = readme_bench_command()
    out = tmp_path / "results.md"
    argv[argv.index("--out") + 1] = str(out)
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 3 and cells[0].startswith("ONNX wine (") and not cells[1].startswith("**"):
            rows[cells[1]] = cells
    assert set(rows) == SMOKE_ROWS, text
    header = next(line for line in text.splitlines() if line.startswith("| case |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    for server, cells in rows.items():
        values = dict(zip(names, cells))
        for column in ("req/s @1", "req/s @8", "start-to-ready s", "worker RSS MB"):
            assert float(values[column]) > 0, (server, column, values)
        assert float(values["p50 ms @8"]) <= float(values["p99 ms @8"]), values
        assert values["failed requests"] == "0", values
    # Ours against MLflow, each at its best form of the run (whichever they are: the numbers are noise here)
    ratio = re.search(r"^\| ONNX wine [^|]*\| \*\*(ours[^*/]*) / (MLflow, [^*]+)\*\* \|", text, re.M)
    assert ratio and {ratio[1], ratio[2]} <= SMOKE_ROWS, text
    assert re.search(rf"^\| ONNX wine: req/s at 8 connections >= 3x MLflow's \| 19 \| {ratio[1]} / {ratio[2]} \|",
                     text, re.M), text
