"""Plugin packages in environments of their own: created on the fly, cached, the server's own left alone.

The plugin ``tests/plugins/needs_package.py`` imports ``roman``, a small pure-Python package
from PyPI that the test environment does not have; it answers with a Roman numeral and the
``sys.prefix`` of the process that scored.
"""

import importlib.util
import shutil
import sys
import time
from pathlib import Path

import pytest

from conftest import TEST_PLUGINS, WINE, serve_main

CACHE_VAR = "MLFLOW_PLUGGABLE_SCORING_SERVER_ENVS"
NEEDS_ROMAN = ["--plugin-file", TEST_PLUGINS / "needs_package.py", "--model-uri", WINE / "model"]
BUILD_TIMEOUT = 900  # a virtualenv is filled by pip, package by package


def environments(cache):
    """The complete environments in a cache folder (lock files and nothing else may sit beside them)."""
    return sorted(p.name for p in Path(cache).iterdir() if p.is_dir()) if Path(cache).exists() else []


def executable(server):
    with open(f"/proc/{server.proc.pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode()


def assert_served_from(server, cache):
    r = server.predict(b"abc", content_type="text/plain")
    assert r.status_code == 200, r.text
    assert r.json()["roman"] == "III"
    assert r.json()["prefix"].startswith(str(cache))


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "envs"


@pytest.mark.slow
@pytest.mark.parametrize("manager", ["uv", "virtualenv"])
def test_plugin_packages_get_a_cached_environment_of_their_own(manager, cache, sample_models, start_server):
    env = {CACHE_VAR: str(cache)}
    args = [*NEEDS_ROMAN, "--packages", "roman", "--env-manager", manager]
    # Two servers starting together: one builds, the other waits for it.
    first, second = (start_server(*args, env=env, wait=False) for _ in range(2))
    for server in (first, second):
        server.wait_ready(timeout=BUILD_TIMEOUT)
        assert_served_from(server, cache)
    logs = first.log() + second.log()
    assert logs.count("creating the environment") == 1, logs
    assert f"with {manager} for roman" in logs
    assert environments(cache) == [environments(cache)[0]] and environments(cache)[0].startswith(manager)
    assert importlib.util.find_spec("roman") is None, "roman was installed into the server's own environment"
    first.stop()
    second.stop()

    started = time.monotonic()
    again = start_server(*args, env=env)
    assert time.monotonic() - started < 60
    assert_served_from(again, cache)
    assert "using the cached environment" in again.log() and "creating the environment" not in again.log()
    assert len(environments(cache)) == 1


@pytest.mark.slow
def test_model_requirements_are_installed_when_asked(cache, tmp_path, sample_models, start_server):
    model = tmp_path / "model"
    shutil.copytree(WINE / "model", model)
    with open(model / "requirements.txt", "a") as f:
        f.write("\nroman\n")
    args = ["--plugin-file", TEST_PLUGINS / "needs_package.py", "--model-uri", model]
    env = {CACHE_VAR: str(cache)}

    without = serve_main(*args, env=env)
    assert without.returncode == 2 and "No module named 'roman'" in without.stderr

    server = start_server(*args, "--install-model-requirements", "--env-manager", "uv", env=env, wait=False)
    server.wait_ready(timeout=BUILD_TIMEOUT)
    assert_served_from(server, cache)
    created = [line for line in server.log().splitlines() if "creating the environment" in line]
    assert len(created) == 1 and "roman" in created[0] and "scikit-learn" in created[0]


@pytest.mark.parametrize("manager", ["uv", "virtualenv"])
def test_failed_install_leaves_nothing_and_says_why(manager, cache, sample_models):
    proc = serve_main(*NEEDS_ROMAN, "--packages", "surely-no-such-package-xyz==0.0.1", "--env-manager", manager,
                      env={CACHE_VAR: str(cache)})
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: installing surely-no-such-package-xyz==0.0.1 failed ({'uv' if manager == 'uv' else 'python'} exit 1):"], proc.stderr
    block = proc.stderr[proc.stderr.index(errors[0]):].splitlines()[1:]
    assert block and all(line.startswith("  | ") for line in block)
    assert "surely-no-such-package-xyz" in "\n".join(block)
    assert "Traceback" not in proc.stderr
    assert environments(cache) == []


def test_nothing_to_install_runs_in_place(cache, start_server):
    server = start_server("--conf", WINE / "conf.yaml", env={CACHE_VAR: str(cache)})
    assert executable(server) == sys.executable
    assert not cache.exists()


def test_local_installs_into_the_server_environment_with_a_warning(cache, start_server):
    server = start_server("--conf", WINE / "conf.yaml", "--packages", "pyyaml", "--env-manager", "local",
                          env={CACHE_VAR: str(cache)})
    assert executable(server) == sys.executable
    warning = f"installing pyyaml into the server's own environment ({sys.prefix})"
    assert any("WARNING" in line and warning in line for line in server.log().splitlines())
    assert not cache.exists()


def test_unknown_env_manager_is_refused(tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("env_manager: conda\nplugin: x.py\nmodel_uri: y\n")
    proc = serve_main("--conf", conf)
    assert proc.returncode == 2 and f"error: env_manager (from conf file '{conf}'): Input should be 'uv', 'virtualenv' or 'local'" in proc.stderr
    proc = serve_main("--conf", conf, "--env-manager", "conda")
    assert proc.returncode == 2 and "error: env_manager: Input should be 'uv', 'virtualenv' or 'local'" in proc.stderr
