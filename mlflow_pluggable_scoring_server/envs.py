"""Environments for a plugin's packages: created on the fly, cached, and the server re-run inside.

With ``env_manager`` ``uv`` or ``virtualenv`` and something to install (``packages``, or the
model's requirements when ``install_model_requirements`` is set), the server builds a virtual
environment with its own requirements, the plugin's packages and the model's requirements,
then re-executes the same command line in it. ``local`` installs into the running
environment instead (``packages.py``). With nothing to install the server runs in place.

Environments are cached in ``~/.cache/mlflow-pluggable-scoring-server/envs`` (or
``$MLFLOW_PLUGGABLE_SCORING_SERVER_ENVS``), one folder per specification: the packages,
the model's requirements, the Python interpreter and the server (version, requirements,
location). An environment is built in a temporary folder beside its cache entry and renamed
into place only when complete, under a lock, so that two servers starting together build it
once and a failed build leaves nothing behind (the lock file included).

The server's own package is not installed in the environment: a symlink in its
site-packages points at the running server's package folder (a checkout or an installed
wheel alike), so the environment serves exactly the code that created it.
"""

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

from . import __version__
from .errors import StartupError
from .locks import exclusive_lock
from .packages import find_uv, install_packages, run_installer

logger = logging.getLogger(__name__)

ENV_MANAGERS = ("uv", "virtualenv", "local")
CACHE_DIR_VAR = "MLFLOW_PLUGGABLE_SCORING_SERVER_ENVS"
INSIDE_VAR = "MLFLOW_PLUGGABLE_SCORING_SERVER_ENV"  # set in the re-executed server: its environment
SERVER_DIST = "mlflow-pluggable-scoring-server"
PACKAGE_DIR = Path(__file__).resolve().parent
SPEC_FILE = "mlflow-pluggable-scoring-server-env.json"  # in a complete environment; written last


def default_env_manager():
    """``uv`` when there is one, else ``virtualenv``."""
    return "uv" if find_uv() else "virtualenv"


def cache_dir():
    return Path(os.environ.get(CACHE_DIR_VAR) or Path.home() / ".cache" / "mlflow-pluggable-scoring-server" / "envs")


def prepare_environment(settings, argv):
    """Make the plugin's packages importable; re-execute the server in an environment if one is needed.

    Returns when the server should go on in this process: nothing to install, ``local``
    (installed here), or already inside the environment. Otherwise it does not return.
    """
    if os.environ.get(INSIDE_VAR):
        return
    packages = settings.all_packages()
    model_requirements = []
    if settings.install_model_requirements:
        for model in settings.served_models():
            model_requirements += [r for r in read_model_requirements(model.model_uri) if r not in model_requirements]
    requirements = packages + model_requirements
    if not requirements:
        return
    if settings.env_manager == "local":
        install_packages(requirements)
        return
    env = ensure_environment(settings.env_manager, packages, model_requirements)
    python = str(env_python(env))
    logger.info("starting the server in %s", env)
    os.environ[INSIDE_VAR] = str(env)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(python, [python, "-m", "mlflow_pluggable_scoring_server.webserver", *argv])


def read_model_requirements(model_uri):
    """The requirement lines of the model's requirements.txt (saved by MLflow beside the MLmodel)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import get_model_dependencies

    quiet = logging.getLogger("mlflow.pyfunc")  # it tells how to pip install them: this module does
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        path = get_model_dependencies(model_uri, format="pip")
    except (MlflowException, OSError) as e:
        raise StartupError(f"cannot read the requirements of model '{model_uri}': {str(e).strip().splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)
    requirements = []
    for line in Path(path).read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("-"):  # -r / -c name files that are not downloaded with it
            logger.warning("model requirements: ignoring '%s'", line)
        elif line and not line.startswith("#"):
            requirements.append(line)
    return requirements


def server_requirements():
    """The running server's own requirements (extras excluded), from its installed metadata."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        declared = requires(SERVER_DIST) or []
    except PackageNotFoundError:
        raise StartupError(f"{SERVER_DIST} is not installed (pip install it) so its requirements are unknown") from None
    return [r for r in declared if not (Requirement(r).marker and "extra" in str(Requirement(r).marker))]


def env_spec(manager, packages, model_requirements):
    """Everything an environment is made of: equal specifications share one cached environment."""
    return {
        "manager": manager,
        "python": {"version": sys.version, "executable": os.path.realpath(sys._base_executable)},
        "server": {"version": __version__, "requirements": sorted(server_requirements()), "package": str(PACKAGE_DIR)},
        "packages": sorted(set(packages)),
        "model_requirements": sorted(set(model_requirements)),
    }


def env_name(spec):
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return f"{spec['manager']}-{digest}"


def env_python(env):
    return Path(env) / "bin" / "python"


def ensure_environment(manager, packages, model_requirements):
    """The cached environment for this specification, created first if there is none."""
    spec = env_spec(manager, packages, model_requirements)
    cache = cache_dir()
    env = cache / env_name(spec)
    if (env / SPEC_FILE).exists():
        logger.info("using the cached environment %s", env)
        return env
    cache.mkdir(parents=True, exist_ok=True)
    waiting = functools.partial(logger.info, "waiting for another server that is creating %s", env)
    with exclusive_lock(cache / f"{env.name}.lock", waiting):
        if (env / SPEC_FILE).exists():  # another server built it while this one waited
            logger.info("using the environment %s, built by another server meanwhile", env)
            return env
        _create(env, spec)
    return env


def _create(env, spec):
    """Build the environment in a temporary folder beside ``env``; rename it into place when complete."""
    for stale in env.parent.glob(f".{env.name}.tmp-*"):  # left by a server that was killed mid-build
        shutil.rmtree(stale, ignore_errors=True)
    tmp = env.parent / f".{env.name}.tmp-{os.getpid()}"
    wanted = spec["packages"] + spec["model_requirements"]
    logger.info("creating the environment %s with %s for %s", env, spec["manager"], ", ".join(wanted))
    started = time.monotonic()
    try:
        CREATORS[spec["manager"]](tmp, spec["server"]["requirements"], wanted)
        _link_server_package(tmp)
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2))
        os.rename(tmp, env)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("environment ready in %.0f s: %s", time.monotonic() - started, env)


def _create_with_uv(tmp, requirements, wanted):
    uv = find_uv()
    if not uv:
        raise StartupError("env_manager uv: no uv beside this Python or on PATH; install it or use --env-manager virtualenv")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    # Relocatable: the environment is renamed into place once built.
    run_installer([uv, "venv", "--quiet", "--relocatable", "--python", sys.executable, str(tmp)],
                  "creating the environment", env=env)
    run_installer([uv, "pip", "install", "--python", str(env_python(tmp)), "--compile-bytecode", *requirements, *wanted],
                  env=env, packages=wanted)


def _create_with_virtualenv(tmp, requirements, wanted):
    run_installer([sys.executable, "-m", "virtualenv", "--quiet", "--python", sys.executable, str(tmp)],
                  "creating the environment")
    run_installer([str(env_python(tmp)), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
                   *requirements, *wanted], packages=wanted)


CREATORS = {"uv": _create_with_uv, "virtualenv": _create_with_virtualenv}


def _link_server_package(env):
    """Make this server's package importable in ``env``, wherever it is installed from."""
    python = env_python(env)
    purelib = sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)})
    if not Path(purelib).is_dir():
        raise StartupError(f"the environment made with {python} has no {purelib}")
    (Path(purelib) / PACKAGE_DIR.name).symlink_to(PACKAGE_DIR, target_is_directory=True)
