"""bench/run.py --smoke: the benchmark harness starts both servers, loads them and writes its table.

Not a benchmark: the numbers of a 2 s load on a shared CI machine only have to be sane.
"""

import re
import subprocess
import sys

from conftest import ROOT


def test_smoke_benchmark_writes_both_servers_rows(sample_models, tmp_path):
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=150)
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
