"""Write the README's table of settings from the settings' fields (tests/test_cli.py checks it is up to date).

    .venv/bin/python scripts/settings_table.py
"""

from pathlib import Path

from mlflow_pluggable_scoring_server.config import reference_table
from mlflow_pluggable_scoring_server.webserver import argument_parser

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
start = text.index("| Flag | Conf key | Default | Meaning |")
end = text.index("\n\n", start)
readme.write_text(text[:start] + reference_table(argument_parser()) + text[end:])
