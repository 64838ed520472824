"""The console script: ``mlflow-pluggable-scoring-server [COMMAND] [ARGS]``.

Without a command it serves, so ``mlflow-pluggable-scoring-server --conf conf.yaml`` keeps
working. Each command is a module with ``main(argv) -> exit status``.
"""

import importlib
import sys

COMMANDS = {
    "serve": ("mlflow_pluggable_scoring_server.webserver", "serve a model through a plugin (the default)"),
    "docker-build": ("mlflow_pluggable_scoring_server.docker_build", "build a container image serving a model through a plugin"),
    "score": ("mlflow_pluggable_scoring_server.offline", "score files or rows on this machine, resumably"),
    "spark-score": ("mlflow_pluggable_scoring_server.spark", "score files or rows on Spark"),
    "check-plugin": ("mlflow_pluggable_scoring_server.check", "check that a plugin keeps the server's contract with a model"),
    "kubernetes": ("mlflow_pluggable_scoring_server.kubernetes", "write Kubernetes and KServe manifests that run an image"),
}


def usage():
    lines = ["usage: mlflow-pluggable-scoring-server [COMMAND] [ARGS]", "", "commands:"]
    lines += [f"  {name:<14}{summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "`mlflow-pluggable-scoring-server COMMAND --help` describes a command."]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("commands", "help"):
        print(usage())
        return 0
    name = argv.pop(0) if argv and argv[0] in COMMANDS else "serve"
    return importlib.import_module(COMMANDS[name][0]).main(argv)


if __name__ == "__main__":
    sys.exit(main())
