"""README.md is the user's manual: every shell block in it is run here, or by CI.

Each ```bash block is preceded by a marker saying how it is checked:

    <!-- test: quickstart -->      the set-up-and-serve command; run with --port, then scored
    <!-- test: ci -->              the test command; .ci/run must run exactly it
    <!-- test: start [slow] -->    commands whose last one starts a server; run with --port until ready
                                   (slow: it may first build an environment, or start Spark)
    <!-- test: curl SAMPLE [TOL] --> curl calls (or `python` client scripts given 127.0.0.1:5005) against
                                   the server the README starts for SAMPLE (see SAMPLE_COMMANDS); output
                                   compared with the block after it (numbers to TOL, by default 1e-5)
    <!-- test: curl-keys SAMPLE --> the same, comparing only the JSON keys
    <!-- test: run [slow] -->      run as it is; must exit 0, and print what the ```text block after
                                   it shows (timings aside)
    <!-- test: docker [ROLE] -->   docker-build, then docker run: run with podman by tests/test_docker_images.py
                                   (skipped there, saying why, where podman cannot run); ROLE `sagemaker`,
                                   `kserve`: scored as that platform would; `context`: docker-build only, with
                                   --builder none, its build context checked (not built: it would take minutes)
    <!-- test: bench -->           the benchmark's smoke run: run by tests/test_bench.py, its table checked
    <!-- test: deployments -->     the `mlflow deployments` workflow: run by tests/test_deployments.py, each step checked
    <!-- test: spark-score -->     `spark-score`: run by tests/test_spark.py, its output compared with the server's answers
    <!-- test: spark-start -->, <!-- test: spark-curl -->
                                   the Spark ML sample's server and its curl example: run by tests/test_spark.py
                                   (one JVM for both, and the pipeline's own predictions compared)

Paths under /tmp/ in the commands become a folder of the test's own, so that every run starts
afresh (a second `score` run would otherwise resume and score nothing).
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
DEFAULT_ADDRESS = DEFAULT_URL.removeprefix("http://")
SERVE = "python -m mlflow_pluggable_scoring_server.webserver "
# The README's own command serving each sample that curl examples name.
SAMPLE_COMMANDS = {
    "wine": SERVE + "--conf plugin_samples/sklearn_wine/conf.yaml",
    "onnx": SERVE + "--conf plugin_samples/sklearn_wine/onnx/conf.yaml",
    "mnist": SERVE + "--conf plugin_samples/keras_mnist/conf.yaml",
    "pyfunc": SERVE + "--model-uri plugin_samples/sklearn_wine/model",
    "image": SERVE + "--plugin image --model-uri plugin_samples/keras_mnist/model",
    "several": SERVE + "--conf plugin_samples/several_models.yaml --model-repository",
}
TIMING = re.compile(r"\d+(?:\.\d+)?(?= s\b|/s\b)")  # "in 1.9 s", "60.3/s": they differ from run to run


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


def is_slow(marker):
    return "slow" in marker[1:]


def start_block(sample):
    """The README's start block serving ``sample``: the first whose last command is SAMPLE_COMMANDS[sample]."""
    return next(b for b in BLOCKS if b[0] and b[0][0] == "start" and b[1][-1] == SAMPLE_COMMANDS[sample])


def blocks_of(*kinds):
    params = []
    for block in BLOCKS:
        marker = block[0]
        if not marker or marker[0] not in kinds:
            continue
        slow = is_slow(marker) or (marker[0].startswith("curl") and is_slow(start_block(marker[1])[0]))
        params.append(pytest.param(block, id=f"line{block[3]}", marks=[pytest.mark.slow] if slow else []))
    return params


def readme_commands(kind):
    """The commands of the one ```bash block marked ``<!-- test: KIND -->``, for the test module that runs them."""
    (commands,) = [commands for marker, commands, _, _ in BLOCKS if marker and marker[0] == kind]
    return commands


def shell_env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_every_shell_block_is_checked():
    unchecked = [line for marker, _, _, line in BLOCKS if marker is None]
    assert not unchecked, f"README.md ```bash blocks without a test marker at lines {unchecked}"
    kinds = {marker[0] for marker, _, _, _ in BLOCKS}
    assert {"quickstart", "ci", "start", "curl", "spark-start", "spark-curl"} <= kinds


@pytest.mark.parametrize("block", blocks_of("ci"))
def test_ci_runs_the_documented_test_command(block):
    _, commands, _, _ = block
    assert len(commands) == 1
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci


@pytest.fixture(scope="module")
def readme_servers(tmp_path_factory):
    """The servers started by the README's start blocks, by line; those that curl examples use live on."""
    servers = {}

    def start(block, tmp):
        (kind, speed, _), commands, _, line = block
        if line not in servers:
            for command in commands[:-1]:
                run_shell(command, tmp)
            port = free_port()
            command = in_folder(commands[-1], tmp)
            server = Server(["bash", "-c", f"{command} --port {port}"], port, tmp / f"server-{line}.log", env=shell_env())
            servers[line] = server
            server.wait_ready(timeout=600 if kind == "quickstart" or speed == "slow" else 120)
        return servers[line]

    yield start
    for server in servers.values():
        server.stop()


def in_folder(command, folder):
    """The command with its /tmp/ paths in ``folder``."""
    return command.replace("/tmp/", f"{folder}/")


@pytest.mark.parametrize("block", blocks_of("quickstart", "start"))
def test_server_commands_start_a_server(block, readme_servers, tmp_path, sample_models):
    """The last command starts the server (on a free port); the ones before it prepare."""
    (kind, _, _), commands, _, line = block
    server = readme_servers(block, tmp_path)
    try:
        assert server.alive()
        if kind == "quickstart":
            r = server.predict(WINE_JSON.read_bytes())
            assert r.status_code == 200 and len(r.json()) == 3
    finally:
        if block not in [start_block(sample) for sample in SAMPLE_COMMANDS]:
            server.stop()  # no curl example needs it


@pytest.mark.parametrize("block", blocks_of("curl", "curl-keys"))
def test_curl_examples_answer_what_the_readme_shows(block, readme_servers, tmp_path_factory, sample_models):
    (kind, sample, _), _, _, _ = block
    check_curl_block(block, readme_servers(start_block(sample), tmp_path_factory.mktemp("readme")))


def check_curl_block(block, server):
    """The curl commands of ``block``, sent to ``server``, print what the README shows after them."""
    (kind, _, tolerance), commands, expected, line = block
    assert expected is not None, f"curl block at line {line} shows no output"
    outputs = []
    for command in commands:
        assert command.startswith(("curl ", "python ")) and DEFAULT_ADDRESS in command  # curl, or a client script
        command = command.replace(DEFAULT_ADDRESS, server.url.removeprefix("http://"))
        proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, env=shell_env(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.strip())
    # One command: its whole output is the block; several: a line of the block each.
    expected_outputs = [expected] if len(commands) == 1 else expected.splitlines()
    assert len(expected_outputs) == len(outputs)
    for actual, shown in zip(outputs, expected_outputs):
        assert_same_output(actual, shown, float(tolerance or 1e-5), keys_only=kind == "curl-keys")


@pytest.mark.parametrize("block", blocks_of("run"))
def test_plain_commands_print_what_the_readme_shows(block, tmp_path):
    """Each command exits 0; the lines the README shows after the block are printed, in that order
    (other lines, such as TensorFlow's start-up chatter, may come between them)."""
    _, commands, expected, _ = block
    output = "".join(run_shell(command, tmp_path) for command in commands)
    if expected is not None:
        printed = iter(screen_lines(output))
        for line in screen_lines(in_folder(expected, tmp_path)):
            assert line in printed, f"{line!r} not printed (in this order):\n{output}"


def screen_lines(text):
    """The lines a terminal shows (what a carriage return redraws replaced), timings masked."""
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    return [TIMING.sub("N", line) for line in lines if line]


def run_shell(command, folder=None):
    """Run a README command (its /tmp/ paths in ``folder``); returns what it printed, stdout then stderr."""
    command = in_folder(command, folder) if folder else command
    env = {**shell_env(), "MLFLOW_PLUGGABLE_SCORING_SERVER_DEPLOYMENTS": str(folder / "deployments")} if folder else shell_env()
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


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
        # Absolute too: a digit model trained on another CPU gives its small probabilities other last digits.
        assert actual == pytest.approx(expected, rel=tolerance, abs=tolerance), f"{path}: {actual} != {expected}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def python_blocks(kind):
    """``(arg, source)`` of the ```python blocks marked ``<!-- test: KIND ARG -->``."""
    text = README.read_text()
    return re.findall(r"<!-- test: " + kind + r" (\S+) -->\n```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("sample, source", python_blocks("plugin"))
def test_plugin_example_serves_the_sample_model(sample, source, sample_models, make_app, tmp_path):
    assert sample == "wine"
    (tmp_path / "plugin.py").write_text(source)
    server = make_app("--plugin-file", tmp_path / "plugin.py", "--model-uri", sample_models["wine"])
    doc = json.loads(WINE_JSON.read_text())
    features = {"columns": doc["columns"][:-1], "data": [row[:-1] for row in doc["data"]]}
    assert doc["columns"][-1] == "quality"
    r = server.predict(json.dumps(features))
    assert r.status_code == 200 and len(r.json()) == 3
