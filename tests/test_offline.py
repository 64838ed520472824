"""The offline `score` command (its main() in-process): real plugins and models, answers compared with the app's."""

import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import DIGIT_PNG, MNIST, SAMPLES, WINE, WINE_JSON, run_main
from mlflow_pluggable_scoring_server import offline

WINE_CSV = SAMPLES / "data" / "winequality-white.csv"
WINE_ROWS = 12


def write_digits(folder):
    """The sample digit, shifted and resized copies of it (PNG and JPEG) and a broken PNG; returns the good ones."""
    folder.mkdir(parents=True, exist_ok=True)
    digit = np.asarray(Image.open(DIGIT_PNG).convert("L"))
    paths = []
    for i, shift in enumerate([(0, 0), (2, 0), (0, -2), (-1, 1)]):
        path = folder / f"digit_{i}.png"
        Image.fromarray(np.roll(digit, shift, axis=(0, 1))).save(path)
        paths.append(path)
    Image.fromarray(digit).resize((56, 56)).convert("RGB").save(folder / "digit_big.jpg", quality=95)
    paths.append(folder / "digit_big.jpg")
    (folder / "broken.png").write_bytes(DIGIT_PNG.read_bytes()[:100])
    return paths


def wine_requests(rows=WINE_ROWS):
    """The first ``rows`` rows of the wine data, each as a one-row table in pandas "split" JSON."""
    with open(WINE_CSV) as f:
        reader = csv.reader(f)
        columns = next(reader)
        return [json.dumps({"columns": columns, "data": [[float(v) for v in row]]}) for _, row in zip(range(rows), reader)]


def score(*args):
    """Run `mlflow-pluggable-scoring-server score ARGS`; returns the CompletedProcess."""
    return run_main("score", *args)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_digit_files_get_the_servers_answers_and_a_broken_one_is_reported(mnist_server, tmp_path):
    good = write_digits(tmp_path / "digits")
    out = tmp_path / "digits.jsonl"
    proc = score("--conf", MNIST / "conf.yaml", "--output", out, tmp_path / "digits")
    assert proc.returncode == 1, proc.stderr
    assert f"failed: {tmp_path / 'digits' / 'broken.png'}: image cannot be decoded" in proc.stderr
    assert "scored 5, skipped 0 already in" in proc.stderr and "failed 1" in proc.stderr
    assert "[" + "#" * 30 + "] 6/6 100%" in proc.stderr  # the progress bar, full at the end
    records = {r["input"]: r["prediction"] for r in read_jsonl(out)}
    assert sorted(records) == sorted(map(str, good))
    for path in good:
        content_type = "image/jpeg" if path.suffix == ".jpg" else "image/png"
        expected = mnist_server.predict(path.read_bytes(), content_type=content_type).json()
        assert np.allclose(records[str(path)], expected, atol=1e-6), path


def test_wine_csv_rows_and_json_files_as_csv_agree_with_the_server(wine_server, tmp_path):
    table = tmp_path / "wine.csv"
    with open(WINE_CSV) as f:
        table.write_text("".join(line for _, line in zip(range(WINE_ROWS + 1), f)) + "7,oops,0.3,1,0.04,30,100,0.99,3.2,0.5,10,6\n")
    out = tmp_path / "wine-out.csv"
    proc = score("--plugin-file", WINE / "plugin.py", "--model-uri", WINE / "model", "--output", out, "--no-progress",
                 table, WINE_JSON)
    assert proc.returncode == 1, proc.stderr
    assert f"failed: {table}:{WINE_ROWS + 2}: every value of \"data\" must be a number" in proc.stderr
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["input", "prediction"]
    by_input = {}
    for key, value in rows[1:]:
        by_input.setdefault(key, []).append(float(value))
    for number, body in enumerate(wine_requests(), 2):
        assert by_input[f"{table}:{number}"] == pytest.approx(wine_server.predict(body).json(), rel=1e-9)
    assert by_input[str(WINE_JSON)] == pytest.approx(wine_server.predict(WINE_JSON.read_bytes()).json(), rel=1e-9)


def test_a_second_run_scores_only_what_is_new_or_failed(wine_server, tmp_path):
    requests_ = wine_requests()
    lines = tmp_path / "wine.jsonl"
    lines.write_text("\n".join(requests_[:6] + ["{not json"]) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["--conf", WINE / "conf.yaml", "--output", out, lines]

    first = score(*args)
    assert first.returncode == 1 and "scored 6, skipped 0" in first.stderr and "failed 1" in first.stderr
    assert f"failed: {lines}:7: request body is not valid JSON" in first.stderr
    # An interrupted run leaves half a line: it is dropped, and that input scored again.
    out.write_text(out.read_text() + '{"input": "cut sh')
    lines.write_text("\n".join(requests_) + "\n")  # the broken line fixed, more rows added

    second = score(*args)
    assert second.returncode == 0, second.stderr
    assert f"scored {len(requests_) - 6}, skipped 6 already in {out}, failed 0" in second.stderr
    records = read_jsonl(out)
    assert [r["input"] for r in records] == [f"{lines}:{n}" for n in range(1, len(requests_) + 1)]
    for record, body in zip(records, requests_):
        assert record["prediction"] == pytest.approx(wine_server.predict(body).json(), rel=1e-9)

    third = score(*args)
    assert third.returncode == 0 and f"scored 0, skipped {len(requests_)}" in third.stderr
    assert read_jsonl(out) == records


def test_without_a_model_it_says_what_is_missing(tmp_path):
    proc = score("--plugin-file", WINE / "plugin.py", "--output", tmp_path / "out.jsonl", WINE_JSON)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: no model: give --model-uri or 'model_uri' in the conf file"


def meter(n, total):
    """The progress meter at ``n`` of ``total``, its rate masked as N."""
    return f"[{'#' * (30 * n // total):<30}] {n}/{total} {100 * n // total:3d}% N/s"


def masked(lines):
    return [re.sub(r"[0-9.]+/s$", "N/s", line.rstrip()) for line in lines]


@pytest.mark.parametrize("interval, flags, progress", [
    (10, [], [0, 0, 0, 4]),  # a short run: only the last line
    (0, [], [1, 2, 3, 4]),  # a line after every input
    (0, ["--no-progress"], [0, 0, 0, 0]),
])
def test_a_log_gets_a_line_of_progress_now_and_then_never_a_carriage_return(interval, flags, progress, monkeypatch, tmp_path):
    """stderr not a terminal (as in a log, in CI, in a pipe): the meter as a line every LOG_INTERVAL
    seconds and at the end, among the failure lines."""
    monkeypatch.setattr(offline, "LOG_INTERVAL", interval, raising=False)  # raising: the old code had none
    requests_ = wine_requests(3)
    lines = tmp_path / "wine.jsonl"
    lines.write_text("\n".join(requests_[:2] + ["{not json"] + requests_[2:]) + "\n")
    out = tmp_path / "out.jsonl"
    proc = score("--conf", WINE / "conf.yaml", "--output", out, *flags, lines)
    assert proc.returncode == 1 and "\r" not in proc.stderr, proc.stderr
    failed = f"failed: {lines}:3: request body is not valid JSON"
    expected = [meter(n, 4) for n in progress[:2] if n] + [failed] + [meter(n, 4) for n in progress[2:] if n]
    shown = [failed if line.startswith(failed) else line for line in masked(proc.stderr.splitlines())]
    assert shown == expected + [f"scored 3, skipped 0 already in {out}, failed 1"]


class Terminal(io.StringIO):
    """What a terminal would be sent."""

    def isatty(self):
        return True


def test_a_terminal_gets_tqdms_bar_redrawn_in_place_and_lines_above_it():
    terminal = Terminal()
    bar = offline.progress_bar(3, file=terminal)
    bar.update()
    bar.write("failed: a.png: image cannot be decoded", file=terminal)
    bar.update(2)
    bar.close()
    assert terminal.getvalue().startswith(f"\r[{' ' * 30}] 0/3   0% ?/s")  # drawn at once, before the first input
    screen = masked(line.rsplit("\r", 1)[-1] for line in terminal.getvalue().split("\n"))
    assert screen == ["failed: a.png: image cannot be decoded", meter(3, 3), ""]
