"""README.md is the user's manual: every shell block in it is run here, or by CI.

Each ```bash block is preceded by a marker saying how it is checked:

    <!-- test: quickstart -->      the set-up-and-serve command; run with --port, then scored
    <!-- test: ci -->              the test command; .ci/run must run exactly it
    <!-- test: start -->           a server command; run with --port until ready
    <!-- test: curl SERVER -->     curl calls against a sample server; output compared with the
                                   block after it (numbers to 1e-5)
    <!-- test: curl-keys SERVER --> the same, comparing only the JSON keys
    <!-- test: run -->             run as it is; must exit 0
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
MARKER = re.compile(r"<!-- test: (\S+)(?: (\S+))? -->")
DEFAULT_URL = "http://127.0.0.1:5005"
SERVERS = {"wine": "wine_server", "onnx": "onnx_server", "mnist": "mnist_server"}


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
    (kind, _), commands, _, _ = block
    assert len(commands) == 1
    port = free_port()
    # exec: the shell becomes the server, so stopping it stops the server.
    server = Server(["bash", "-c", f"exec {commands[0]} --port {port}"], port, tmp_path / "server.log", env=shell_env())
    try:
        server.wait_ready(timeout=600 if kind == "quickstart" else 120)
        if kind == "quickstart":
            r = server.predict(WINE_JSON.read_bytes())
            assert r.status_code == 200 and len(r.json()) == 3
    finally:
        server.stop()


@pytest.mark.parametrize("block", blocks_of("curl", "curl-keys"))
def test_curl_examples_answer_what_the_readme_shows(block, request):
    (kind, server_name), commands, expected, line = block
    server = request.getfixturevalue(SERVERS[server_name])
    assert expected is not None, f"curl block at line {line} shows no output"
    outputs = []
    for command in commands:
        assert command.startswith("curl ") and DEFAULT_URL in command
        proc = subprocess.run(["bash", "-c", command.replace(DEFAULT_URL, server.url)], capture_output=True, text=True,
                              cwd=ROOT, env=shell_env(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.strip())
    assert_same_output("\n".join(outputs), expected, keys_only=kind == "curl-keys")


@pytest.mark.parametrize("block", blocks_of("run"))
def test_plain_commands_succeed(block):
    _, commands, _, _ = block
    for command in commands:
        proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, env=shell_env(), timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_same_output(actual, expected, keys_only=False):
    try:
        actual_doc, expected_doc = json.loads(actual), json.loads(expected)
    except ValueError:
        actual_doc = [[float(x) for x in row.split(",")] for row in actual.split()]
        expected_doc = [[float(x) for x in row.split(",")] for row in expected.split()]
    assert_same(actual_doc, expected_doc, keys_only)


def assert_same(actual, expected, keys_only, path="$"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), f"{path}: keys {set(actual)} != {set(expected)}"
        for key in expected:
            assert_same(actual[key], expected[key], keys_only, f"{path}.{key}")
    elif keys_only:
        return
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual} != {expected}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, keys_only, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-7), f"{path}: {actual} != {expected}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"
