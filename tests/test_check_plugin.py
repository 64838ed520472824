"""`check-plugin` as plugin authors run it (its main() in-process): real plugins, real models.

The console script itself is run in test_cli.py.
"""

import re

import pytest

from conftest import DIGIT_PNG, MNIST, TEST_PLUGINS, WINE, WINE_JSON, run_main


def check_plugin(*args):
    proc = run_main("check-plugin", *args)
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


def outcomes(proc):
    """``{check: (outcome, detail)}`` from the PASS/FAIL/SKIP/WARN lines; every other line is the summary."""
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"check-plugin: \d+ passed, \d+ failed, \d+ skipped, \d+ warnings", lines[-1]), proc.stdout
    found = {}
    for line in lines[:-1]:
        outcome, check, detail = re.fullmatch(r"(PASS|FAIL|SKIP|WARN) (.+?): (.*)", line).groups()
        found[check] = (outcome, detail)
    return found


def test_minimal_third_party_plugin_passes(tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text("any text at all")
    proc = check_plugin("--plugin-file", TEST_PLUGINS / "third_party.py", "--plugin-class", "third_party.Plugin",
                        "--model-uri", WINE / "model", "--sample", sample)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = outcomes(proc)
    assert found["plugin"] == ("PASS", "Plugin from " + str(TEST_PLUGINS / "third_party.py"))
    assert found["request media types"] == ("PASS", "text/plain, application/octet-stream")
    assert found["sample as text/plain, answer as application/json"] == ("PASS", "200, 4 bytes")
    assert found["sample as text/plain, answer as text/csv"] == ("PASS", "200, 3 bytes")
    # It scores any bytes: allowed, and said.
    assert found["random bytes as text/plain"][0] == "WARN"
    assert "0 failed" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--conf", WINE / "conf.yaml", "--sample", WINE_JSON],
        ["--plugin", "image", "--model-uri", MNIST / "model", "--sample", DIGIT_PNG],
    ],
    ids=["wine-sample", "built-in-image"],
)
def test_sample_and_built_in_plugins_pass(sample_models, args):
    proc = check_plugin(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = outcomes(proc)
    assert {outcome for outcome, _ in found.values()} == {"PASS"}, proc.stdout
    content_type = "application/json" if "--conf" in args else "image/png"
    assert found[f"sample as {content_type}, answer as text/csv"][0] == "PASS"
    assert found[f"random bytes as {content_type}"][1].startswith("400: ")
    assert found[f"truncated sample as {content_type}"][1].startswith("400: ")


@pytest.mark.parametrize(
    "plugin, sample, expected",
    [
        ("contract_breakers.py:Number", "42", {"random bytes as text/plain": "500 instead of 400 (InvalidInput): ValueError"}),
        ("contract_breakers.py:BogusMediaTypes", "42", {
            "request media types": "'json' is not a media type (type/subtype)",
            "response media types": "'image/*' is not a media type (type/subtype, no wildcard)",
        }),
        ("contract_breakers.py:NoEncoder", "42", {
            "sample as text/plain, answer as application/x-npy": "500: ValueError: no encoder for application/x-npy",
        }),
        ("behaviours.py:ReturnsNone", None, {
            "sample as application/json, answer as application/json": "500: ValueError: the plugin's predict returned None",
        }),
        ("behaviours.py:Unencodable", None, {
            "sample as application/json, answer as application/json": "500: TypeError: object is not JSON serializable",
            # Not a table: CSV is not applicable to this answer (a 406), which is no fault.
            "sample as application/json, answer as text/csv": ("SKIP", "406 for this sample: the prediction is not a table"),
        }),
        ("behaviours.py:Raising", None, {
            "sample as application/json, answer as application/json": "500: RuntimeError: model exploded",
            "JSON of another shape as application/json": "500 instead of 400 (InvalidInput): RuntimeError",
        }),
        ("not_plugins.py:HalfPlugin", None, {"plugin": "is not a plugin"}),
    ],
)
def test_broken_plugins_fail_with_the_reason(sample_models, tmp_path, plugin, sample, expected):
    file, class_name = plugin.split(":")
    if sample is None:
        sample_path = WINE_JSON
    else:
        sample_path = tmp_path / "sample.txt"
        sample_path.write_text(sample)
    proc = check_plugin("--plugin-file", TEST_PLUGINS / file, "--plugin-class", class_name, "--model-uri", WINE / "model",
                        "--sample", sample_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = outcomes(proc)
    for check, reason in expected.items():
        outcome, reason = reason if isinstance(reason, tuple) else ("FAIL", reason)
        assert found[check][0] == outcome and reason in found[check][1], proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--plugin", "image"], "error: no model: give --model-uri"),
        (["--plugin", "image", "--model-uri", "no/such/model"], "error: model URI 'no/such/model' does not resolve"),
        (["--conf", WINE / "conf.yaml", "--sample", "no/such/sample.json"], "error: cannot read sample 'no/such/sample.json'"),
    ],
)
def test_usage_errors_exit_2(sample_models, args, message):
    proc = check_plugin(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith(message), proc.stderr


@pytest.mark.parametrize("args, media_type", [
    (["--conf", WINE / "conf.yaml"], "application/json"),  # the model's saved input example
    (["--conf", MNIST / "conf.yaml"], "image/png"),  # the sample digit beside the plugin
    (["--model-uri", WINE / "model"], "application/json"),  # pyfunc: the model's input example
], ids=["wine-sample", "keras-sample", "pyfunc"])
def test_without_a_sample_the_plugins_example_request_is_checked(sample_models, args, media_type):
    proc = check_plugin(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = outcomes(proc)
    assert found["example_request"][0] == "PASS" and found["example_request"][1].endswith(f"bytes of {media_type}, sent as the sample")
    assert found[f"sample as {media_type}, answer as application/json"][0] == "PASS"
    assert "sample" not in found  # no SKIP: predictions were checked
