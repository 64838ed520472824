"""The ``local`` environment manager: a plugin's packages installed into the server's own environment.

The other managers create an environment of their own (``envs.py``).
"""

import logging
import os
import shutil
import subprocess
import sys

from .errors import StartupError

logger = logging.getLogger(__name__)

MAX_ERROR_LINES = 40  # of the installer's output, in the start-up error


def find_uv():
    """The uv beside this interpreter or on PATH, else None."""
    return shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")


def installer_command(packages):
    """uv when there is one, else pip, for this interpreter."""
    uv = find_uv()
    if uv:
        return [uv, "pip", "install", "--python", sys.executable, "--compile-bytecode", *packages]
    return [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *packages]


def install_packages(packages):
    """Install ``packages`` into the running environment, or raise StartupError with the installer's output."""
    logger.warning("installing %s into the server's own environment (%s)", ", ".join(packages), sys.prefix)
    run_installer(installer_command(packages), f"installing {', '.join(packages)}")


def run_installer(cmd, what, env=None):
    """Run a package manager, showing its output line by line as progress.

    On failure, raise StartupError: ``what`` failed, with the end of the output as one indented block.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            # uv lists every package it installed: detail, not progress.
            logger.log(logging.DEBUG if line.lstrip().startswith(("+ ", "- ")) else logging.INFO, "  %s", line)
    if proc.wait() != 0:
        output = "\n".join("  | " + line for line in lines[-MAX_ERROR_LINES:])
        raise StartupError(f"{what} failed ({os.path.basename(cmd[0])} exit {proc.returncode}):\n{output}")
