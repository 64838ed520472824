"""Plugin packages in environments of their own: created on the fly, cached, the server's own left alone.

The plugin ``tests/plugins/needs_package.py`` imports ``roman``, a small pure-Python package
from PyPI that the test environment does not have; it answers with a Roman numeral and the
``sys.prefix`` of the process that scored.
"""

import importlib.util
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TEST_PLUGINS, WINE, serve_main

CACHE_VAR = "MLFLOW_PLUGGABLE_SCORING_SERVER_ENVS"
NEEDS_ROMAN = ["--plugin-file", TEST_PLUGINS / "needs_package.py", "--model-uri", WINE / "model"]
BUILD_TIMEOUT = 900  # a virtualenv is filled by pip, package by package
PYTHON = f"Python {sys.version_info.major}.{sys.version_info.minor}"


def environments(cache):
    """The environments in a cache folder, which holds nothing else (no lock file) once servers have started."""
    names = sorted(p.name for p in Path(cache).iterdir()) if Path(cache).exists() else []
    assert all(Path(cache, name).is_dir() for name in names), names
    return names


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


@pytest.mark.parametrize("manager", ["uv", pytest.param("virtualenv", marks=pytest.mark.slow)])  # virtualenv: 5 to 7 s each
@pytest.mark.parametrize("package, failure", ids=["not-found", "no-wheel-build-fails"], argvalues=[
    ("surely-no-such-package-xyz==0.0.1", f"surely-no-such-package-xyz==0.0.1 could not be installed for {PYTHON}"),
    # A 2019 release: no wheel for this Python, and its setup.py imports pkg_resources, which
    # build environments no longer have.
    ("scikit-learn==0.20.2", f"scikit-learn==0.20.2 could not be built for {PYTHON}: no wheel for it, "
                             "and the build from source failed"),
])
def test_failed_install_leaves_nothing_and_says_why_once(manager, package, failure, cache, sample_models, caplog):
    caplog.set_level(logging.INFO)
    proc = serve_main(*NEEDS_ROMAN, "--packages", package, "--env-manager", manager, env={CACHE_VAR: str(cache)})
    assert proc.returncode == 2
    first, *block = proc.stderr.splitlines()
    assert first == f"error: {failure} ({'uv' if manager == 'uv' else 'python'} exit 1):", proc.stderr
    assert block and all(line.startswith("  | ") for line in block), proc.stderr
    assert package.split("==")[0] in "\n".join(block)
    # The installer's output is shown once: as progress up to its error, then in the error.
    progress = [r.getMessage() for r in caplog.records if r.name.endswith(".packages")]
    assert progress, "no progress shown"
    assert not [line for line in block if any(shown.endswith(line[4:]) for shown in progress)]
    assert "Traceback" not in "\n".join(progress)
    assert not cache.exists() or list(cache.iterdir()) == [], "the failed build left files (a lock?) in the cache"


def test_lock_files_go_with_their_lock_and_still_exclude(tmp_path):
    """Processes taking turns to increment a counter: none is lost, though each lock file is removed on release."""
    script = """if True:
        import sys
        from pathlib import Path
        from mlflow_pluggable_scoring_server.locks import exclusive_lock
        counter = Path(sys.argv[1]) / "counter"
        for _ in range(300):
            with exclusive_lock(counter.with_suffix(".lock")):
                counter.write_text(str(int(counter.read_text() or 0) + 1))
    """
    (tmp_path / "counter").write_text("")
    procs = [subprocess.Popen([sys.executable, "-c", script, tmp_path]) for _ in range(6)]
    assert [proc.wait(timeout=120) for proc in procs] == [0] * 6
    assert (tmp_path / "counter").read_text() == str(6 * 300)
    assert [p.name for p in tmp_path.iterdir()] == ["counter"]


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
