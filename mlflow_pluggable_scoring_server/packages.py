"""Extra packages a plugin needs (``--packages``), installed before the server starts."""

import logging
import os
import shutil
import subprocess
import sys

from .errors import StartupError

logger = logging.getLogger(__name__)


def installer_command(packages):
    """uv when there is one (beside this interpreter or on PATH), else pip, for this interpreter."""
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if uv:
        return [uv, "pip", "install", "--python", sys.executable, *packages]
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *packages]


def install_packages(packages):
    """Install ``packages`` into the running environment, or raise StartupError with the installer's output."""
    logger.warning("installing %s into the server's own environment (%s)", ", ".join(packages), sys.prefix)
    cmd = installer_command(packages)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        output = "\n".join("  | " + line for line in (proc.stderr or proc.stdout).strip().splitlines())
        raise StartupError(f"installing {', '.join(packages)} failed ({os.path.basename(cmd[0])} exit {proc.returncode}):\n{output}")
