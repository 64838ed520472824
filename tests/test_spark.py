"""Spark: the Spark ML wine sample served, and batch scoring with plugin_udf and `spark-score`
on local Spark, compared with the server's answers (the app in-process) for the same inputs.

Marked slow: each starts a JVM."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import MNIST, ROOT, WINE, WINE_JSON, Server, free_port
from test_offline import wine_requests, write_digits

pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def spark():
    """One local Spark for the module: it takes seconds to start."""
    from mlflow_pluggable_scoring_server.spark import local_session

    session = local_session("local[2]", "test_spark", **{"spark.driver.memory": "1g"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def sparkml_server(tmp_path_factory, sample_models):
    """The Spark ML wine sample, started by the README's command: its worker starts a local Spark (Java)."""
    from test_readme import readme_commands, shell_env

    (command,) = readme_commands("spark-start")
    port = free_port()
    server = Server(["bash", "-c", f"{command} --port {port}"], port, tmp_path_factory.mktemp("sparkml") / "server.log",
                    env=shell_env())
    yield server.wait_ready(timeout=600)
    server.stop()


@pytest.mark.slow
def test_readmes_curl_example_answers_what_it_shows(sparkml_server):
    from test_readme import BLOCKS, check_curl_block

    (block,) = [b for b in BLOCKS if b[0] and b[0][0] == "spark-curl"]
    check_curl_block(block, sparkml_server)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    return folder, write_digits(folder)


def server_answers(server, paths):
    return {str(p): server.predict(p.read_bytes(), content_type="image/jpeg" if p.suffix == ".jpg" else "image/png").json()
            for p in paths}


@pytest.mark.slow
def test_sparkml_wine_server_answers_the_pipelines_own_predictions(sparkml_server, spark, sample_models):
    import mlflow.spark

    doc = json.loads(WINE_JSON.read_text())
    features = doc["columns"][:-1]
    frame = spark.createDataFrame([[float(v) for v in row[:-1]] for row in doc["data"]], features)
    expected = [row.prediction for row in mlflow.spark.load_model(str(sample_models["sparkml"])).transform(frame).collect()]

    r = sparkml_server.predict(WINE_JSON.read_bytes())
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == pytest.approx(expected, rel=1e-9)
    assert all(3 < q < 8 for q in r.json())
    csv = sparkml_server.predict(WINE_JSON.read_bytes(), accept="text/csv")
    assert [float(line) for line in csv.text.splitlines()] == pytest.approx(expected, rel=1e-9)
    broken = sparkml_server.predict(b'{"columns": ["alcohol"], "data": [[10]]}')
    assert broken.status_code == 400 and "missing columns: fixed acidity" in broken.json()["message"]


@pytest.mark.slow
def test_plugin_udf_scores_binary_files_like_the_server(spark, digits, mnist_server):
    from mlflow_pluggable_scoring_server.spark import plugin_udf

    folder, good = digits
    score = plugin_udf(MNIST / "plugin.py", str(MNIST / "model"))
    files = spark.read.format("binaryFile").load(str(folder))
    rows = {row.path.removeprefix("file:"): row for row in files.select("path", score("content", "path").alias("r")).select("path", "r.*").collect()}
    assert sorted(rows) == sorted(map(str, good + [folder / "broken.png"]))
    assert rows[str(folder / "broken.png")].prediction is None
    assert rows[str(folder / "broken.png")].error.startswith("image cannot be decoded")
    for path, expected in server_answers(mnist_server, good).items():
        assert rows[path].error is None
        assert np.allclose(json.loads(rows[path].prediction), expected, atol=1e-6), path


@pytest.mark.slow
def test_plugin_udf_scores_a_json_string_column_like_the_server(spark, wine_server):
    from mlflow_pluggable_scoring_server.spark import plugin_udf

    bodies = wine_requests() + ['{"columns": ["alcohol"], "data": []}']
    frame = spark.createDataFrame([(i, body) for i, body in enumerate(bodies)], "id int, body string")
    score = plugin_udf(WINE / "plugin.py", str(WINE / "model"))
    rows = frame.select("id", score("body").alias("r")).orderBy("id").select("r.*").collect()
    for body, row in zip(bodies[:-1], rows):
        assert row.error is None and json.loads(row.prediction) == pytest.approx(wine_server.predict(body).json(), rel=1e-9)
    assert rows[-1].prediction is None and rows[-1].error == '"data" has no rows'


def spark_score(*args):
    return subprocess.run([sys.executable, "-m", "mlflow_pluggable_scoring_server.cli", "spark-score", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_readmes_spark_score_writes_a_glob_of_pngs_to_parquet(digits, mnist_server, tmp_path):
    """The README's command, on a folder of digits with a broken PNG among them and the output here."""
    import pyarrow.parquet as pq

    from test_readme import readme_commands

    folder, good = digits
    out = tmp_path / "digits.parquet"
    (command,) = readme_commands("spark-score")
    argv = shlex.split(command)
    assert argv[:2] == ["mlflow-pluggable-scoring-server", "spark-score"] and argv[-1].endswith("*.png")
    argv[argv.index("--output") + 1], argv[-1] = str(out), str(folder / "*.png")
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 1, proc.stderr
    assert "scored 4 of 5 inputs" in proc.stderr and "failed: file:" + str(folder / "broken.png") in proc.stderr
    table = pq.read_table(out).to_pylist()
    rows = {row["input"].removeprefix("file:"): row for row in table}
    assert sorted(rows) == sorted(str(p) for p in good + [folder / "broken.png"] if p.suffix == ".png")
    for path, expected in server_answers(mnist_server, [p for p in good if p.suffix == ".png"]).items():
        assert np.allclose(json.loads(rows[path]["prediction"]), expected, atol=1e-6), path


@pytest.mark.slow
def test_spark_score_writes_json_lines_rows_to_json(wine_server, tmp_path):
    lines = tmp_path / "wine.jsonl"
    bodies = wine_requests()
    lines.write_text("\n".join(bodies) + "\n")
    out = tmp_path / "wine-out"
    proc = spark_score("--plugin-file", WINE / "plugin.py", "--model-uri", WINE / "model", "--format", "json",
                       "--output", out, "--master", "local[1]", lines)
    assert proc.returncode == 0, proc.stderr
    assert f"scored {len(bodies)} of {len(bodies)} inputs" in proc.stderr
    rows = {}
    for part in sorted(out.glob("part-*.json")):
        rows.update((r["input"], r) for r in map(json.loads, part.read_text().splitlines()))
    assert sorted(rows) == sorted(f"{lines}:{n}" for n in range(1, len(bodies) + 1))
    for n, body in enumerate(bodies, 1):
        assert json.loads(rows[f"{lines}:{n}"]["prediction"]) == pytest.approx(wine_server.predict(body).json(), rel=1e-9)


def test_the_server_and_offline_scoring_never_import_pyspark():
    code = ("import sys, mlflow_pluggable_scoring_server.webserver, mlflow_pluggable_scoring_server.offline, "
            "mlflow_pluggable_scoring_server.spark; assert 'pyspark' not in sys.modules, 'pyspark imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_the_readmes_plugin_udf_example_runs(spark, monkeypatch, capsys):
    source = re.search(r"```python\n(from mlflow_pluggable_scoring_server\.spark import .*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(ROOT)
    exec(source, {})
    shown = capsys.readouterr().out.replace(" ", "")
    assert "|file:/" in shown and "|[[0.99" in shown and "|NULL|" in shown  # path, prediction (a 0), no error
