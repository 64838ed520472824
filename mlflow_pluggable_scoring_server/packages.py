"""The ``local`` environment manager: a plugin's packages installed into the server's own environment.

The other managers create an environment of their own (``envs.py``).
"""

import logging
import os
import re
import shutil
import subprocess
import sys

from .errors import StartupError

logger = logging.getLogger(__name__)

MAX_ERROR_LINES = 40  # of the installer's output, in the start-up error
# Where uv's and pip's errors begin ("error: ...", "ERROR: ...", "  × ...").
ERROR_LINE = re.compile(r"\s*(?:error\b|×)", re.IGNORECASE)
# A build that failed, as uv and pip say it: "Failed to build `x==1`", "Failed building wheel for x",
# "Could not build wheels for x", "Getting requirements to build wheel ... 'error'"...
BUILD_FAILED = re.compile(r"\b(?:fail\w*|error|could not)\b.*\bbuild|\bbuild\w*\b.*\b(?:fail\w*|error)\b", re.IGNORECASE)
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    run_installer(installer_command(packages), packages=packages)


def run_installer(cmd, what=None, env=None, packages=()):
    """Run a package manager, showing its output line by line as progress.

    On failure, raise StartupError: first what failed (for an install, which of ``packages``
    could not be installed for this Python), then the manager's error as one indented block.
    Its lines from the first error line on are held back for that block, so that no line is
    shown twice.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    shown, held = [], []
    for line in proc.stdout:
        line = line.rstrip()
        if not line:
            continue
        if held or ERROR_LINE.match(line):
            held.append(line)
        else:
            shown.append(line)
            # uv lists every package it installed: detail, not progress.
            logger.log(logging.DEBUG if line.lstrip().startswith(("+ ", "- ")) else logging.INFO, "  %s", line)
    if proc.wait() == 0:
        for line in held:  # e.g. pip's resolver complaints, which do not fail an install
            logger.warning("  %s", line)
        return
    failed = not_installed(packages, shown + held) if packages else f"{what} failed"
    # Without an error line (not uv's or pip's way) the end of the output, shown above, says why.
    block = held or shown
    if len(block) > MAX_ERROR_LINES:
        block = [f"... ({len(block) - MAX_ERROR_LINES} lines before)", *block[-MAX_ERROR_LINES:]]
    raise StartupError(f"{failed} ({os.path.basename(cmd[0])} exit {proc.returncode}):\n"
                       + "\n".join("  | " + line for line in block))


def not_installed(packages, output):
    """Which of ``packages`` could not be installed for this Python, and why if the installer's output tells."""
    python = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    built = failed_builds(output, packages)
    if built:
        return f"{', '.join(built)} could not be built for {python}: no wheel for it, and the build from source failed"
    if built is not None:
        return (f"{', '.join(packages)} could not be installed for {python}: a package they need has no wheel for it, "
                "and its build from source failed")
    return f"{', '.join(packages)} could not be installed for {python}"


def failed_builds(lines, packages):
    """Those of ``packages`` the output says failed to build; [] for another package's build; None if no build failed."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    failures = [line for line in lines if BUILD_FAILED.search(line)]
    if not failures:
        return None
    mentioned = {canonicalize_name(word) for line in failures for word in WORD.findall(line)}
    named = []
    for package in packages:
        try:
            if canonicalize_name(Requirement(package).name) in mentioned:
                named.append(package)
        except InvalidRequirement:  # a path or a URL: its name is not known here
            pass
    return named
