"""bench/run.py --smoke, as the README runs it: the harness starts both servers, loads them and writes its table.

Not a benchmark: the numbers of a 2 s load on a shared CI machine only have to be sane.
"""

import re
import shlex
import subprocess

import pytest

from conftest import ROOT


def readme_bench_command():
    """The README's smoke run (the ```bash block marked ``<!-- test: bench -->``)."""
    from test_readme import readme_commands

    (command,) = readme_commands("bench")
    return shlex.split(command)


@pytest.mark.slow
def test_smoke_benchmark_writes_both_servers_rows(sample_models, tmp_path):
    argv = readme_bench_command()
    out = tmp_path / "results.md"
    argv[argv.index("--out") + 1] = str(out)
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {}
    for line in out.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 3 and cells[0].startswith("ONNX wine") and cells[1] in ("ours", "MLflow"):
            rows[cells[1]] = cells
    assert set(rows) == {"ours", "MLflow"}, out.read_text()
    header = next(line for line in out.read_text().splitlines() if line.startswith("| case |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    for server, cells in rows.items():
        values = dict(zip(names, cells))
        for column in ("req/s @1", "req/s @8", "start-to-ready s", "worker RSS MB"):
            assert float(values[column]) > 0, (server, column, values)
        assert float(values["p50 ms @8"]) <= float(values["p99 ms @8"]), values
        assert values["failed requests"] == "0", values
    assert re.search(r"\*\*ours / MLflow\*\*", out.read_text())
