"""README.md is the user's manual: every shell block in it is run here, or by CI.

Each ```bash block is preceded by a marker saying how it is checked:

    <!-- test: quickstart -->      the set-up-and-serve command; run with --port, then scored
    <!-- test: ci -->              the test command; .ci/run must run exactly it
    <!-- test: start [slow] -->    commands whose last one starts a server; run with --port until ready
                                   (slow: it may first build an environment)
    <!-- test: curl SERVER [TOL] --> curl calls against a sample server; output compared with
                                   the block after it (numbers to TOL, by default 1e-5)
    <!-- test: curl-keys SERVER --> the same, comparing only the JSON keys
    <!-- test: run -->             run as it is; must exit 0
    <!-- test: docker -->          docker-build, then docker run: run with podman by tests/test_docker.py
                                   (skipped there, saying why, where podman cannot run)
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, WINE_JSON, Server, free_port

README = ROOT / "README.md"
MARKER = re.compile(r"<!-- test: (\S+)(?: (\S+))?(?: (\S+))? -->")
DEFAULT_URL = "http://127.0.0.1:5005"
SERVERS = {"wine": "wine_server", "pyfunc": "pyfunc_server", "onnx": "onnx_server", "mnist": "mnist_server",
           "sparkml": "sparkml_server", "image": "image_server"}


def shell_blocks():
    """``(kind, arg, commands, expected_output, line)`` for every ```bash block of the README."""
    lines = README.read_text().splitlines()
    blocks, marker = [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        if MARKER.fullmatch(line.strip()):
            marker = MARKER.fullmatch(line.strip()).groups()
        elif line.startswith("```bash"):
            start = i
            body = []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            expected = None
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and re.fullmatch(r"```(json|text|csv)", lines[j]):
                k = j + 1
                out = []
                while not lines[k].startswith("```"):
                    out.append(lines[k])
                    k += 1
                expected = "\n".join(out)
            commands = [c.strip() for c in "\n".join(body).replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
            blocks.append((marker, commands, expected, start + 1))
            marker = None
        i += 1
    return blocks


BLOCKS = shell_blocks()


def blocks_of(*kinds):
    return [pytest.param(b, id=f"line{b[3]}") for b in BLOCKS if b[0] and b[0][0] in kinds]


def shell_env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_every_shell_block_is_checked():
    unchecked = [line for marker, _, _, line in BLOCKS if marker is None]
    assert not unchecked, f"README.md ```bash blocks without a test marker at lines {unchecked}"
    kinds = {marker[0] for marker, _, _, _ in BLOCKS}
    assert {"quickstart", "ci", "start", "curl"} <= kinds


@pytest.mark.parametrize("block", blocks_of("ci"))
def test_ci_runs_the_documented_test_command(block):
    _, commands, _, _ = block
    assert len(commands) == 1
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci


@pytest.mark.parametrize("block", blocks_of("quickstart", "start"))
def test_server_commands_start_a_server(block, sample_models, tmp_path):
    """The last command starts the server (on a free port); the ones before it prepare."""
    (kind, speed, _), commands, _, _ = block
    for command in commands[:-1]:
        run_shell(command)
    port = free_port()
    server = Server(["bash", "-c", f"{commands[-1]} --port {port}"], port, tmp_path / "server.log", env=shell_env())
    try:
        server.wait_ready(timeout=600 if kind == "quickstart" or speed == "slow" else 120)
        if kind == "quickstart":
            r = server.predict(WINE_JSON.read_bytes())
            assert r.status_code == 200 and len(r.json()) == 3
    finally:
        server.stop()


@pytest.mark.parametrize("block", blocks_of("curl", "curl-keys"))
def test_curl_examples_answer_what_the_readme_shows(block, request):
    (kind, server_name, tolerance), commands, expected, line = block
    server = request.getfixturevalue(SERVERS[server_name])
    assert expected is not None, f"curl block at line {line} shows no output"
    outputs = []
    for command in commands:
        assert command.startswith("curl ") and DEFAULT_URL in command
        proc = subprocess.run(["bash", "-c", command.replace(DEFAULT_URL, server.url)], capture_output=True, text=True,
                              cwd=ROOT, env=shell_env(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.strip())
    # One command: its whole output is the block; several: a line of the block each.
    expected_outputs = [expected] if len(commands) == 1 else expected.splitlines()
    assert len(expected_outputs) == len(outputs)
    for actual, shown in zip(outputs, expected_outputs):
        assert_same_output(actual, shown, float(tolerance or 1e-5), keys_only=kind == "curl-keys")


@pytest.mark.parametrize("block", blocks_of("run"))
def test_plain_commands_succeed(block):
    _, commands, _, _ = block
    for command in commands:
        run_shell(command)


def run_shell(command):
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, env=shell_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_same_output(actual, expected, tolerance, keys_only=False):
    try:
        actual_doc, expected_doc = json.loads(actual), json.loads(expected)
    except ValueError:
        actual_doc = [[float(x) for x in row.split(",")] for row in actual.split()]
        expected_doc = [[float(x) for x in row.split(",")] for row in expected.split()]
    assert_same(actual_doc, expected_doc, tolerance, keys_only)


def assert_same(actual, expected, tolerance, keys_only, path="$"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), f"{path}: keys {set(actual)} != {set(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], tolerance, keys_only, f"{path}.{key}")
    elif keys_only:
        return
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual} != {expected}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, tolerance, keys_only, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=tolerance, abs=tolerance / 100), f"{path}: {actual} != {expected}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def python_blocks(kind):
    """``(arg, source)`` of the ```python blocks marked ``<!-- test: KIND ARG -->``."""
    text = README.read_text()
    return re.findall(r"<!-- test: " + kind + r" (\S+) -->\n```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("sample, source", python_blocks("plugin"))
def test_plugin_example_serves_the_sample_model(sample, source, sample_models, start_server, tmp_path):
    assert sample == "wine"
    (tmp_path / "plugin.py").write_text(source)
    server = start_server("--plugin-file", tmp_path / "plugin.py", "--model-uri", sample_models["wine"])
    doc = json.loads(WINE_JSON.read_text())
    features = {"columns": doc["columns"][:-1], "data": [row[:-1] for row in doc["data"]]}
    assert doc["columns"][-1] == "quality"
    r = server.predict(json.dumps(features))
    assert r.status_code == 200 and len(r.json()) == 3
