"""Offline scoring: files or rows through a plugin and a model on one machine, no server.

    mlflow-pluggable-scoring-server score --conf plugin_samples/keras_mnist/conf.yaml \\
        --output predictions.jsonl plugin_samples/keras_mnist/data/

Every input goes through the server's own request path
(:class:`~mlflow_pluggable_scoring_server.scoring.Scorer`), so it gets the answer the
server would give for the same body. The output is appended to as inputs are scored:
a second run skips the inputs already in it. An input that cannot be scored is
reported on stderr and left out of the output (so the next run tries it again).
"""

import argparse
import csv
import glob
import io
import json
import logging
import mimetypes
import os
import sys

from tqdm import tqdm

from .errors import ScoringError, StartupError
from .media import JSON, matches
from .config import add_plugin_flags
from .plugin import load_plugin

LINE_SUFFIXES = (".jsonl", ".ndjson")  # scored line by line, each line a JSON body
ROW_SUFFIXES = (".csv",)  # scored row by row, each row a one-row table in pandas "split" JSON
FORMATS = {"jsonl": JSON, "csv": "text/csv"}  # output format: the answer's media type


def content_type_for(name, accepted):
    """The media type to send the file ``name`` as: its extension's, if the plugin takes
    that, else the plugin's first request type that is not a wildcard."""
    guessed = mimetypes.guess_type(name)[0] if name else None
    if guessed and any(matches(pattern, guessed) for pattern in accepted):
        return guessed
    return next((t for t in accepted if "*" not in t), "application/octet-stream")


def failure_reason(error):
    """Why an input could not be scored, in one line: a plugin's own error rather than the
    server's "see the log" message."""
    cause = error.__cause__
    reason = f"{type(cause).__name__}: {cause}" if error.status_code == 500 and cause is not None else error.message
    return (reason.strip().splitlines() or [""])[0]


def args_settings(args):
    """Settings with the plugin and model of ``--conf`` and the flags of :func:`add_plugin_args`, unchecked."""
    from .config import build_settings

    return build_settings(args.conf, plugin=args.plugin, plugin_class=args.plugin_class,
                          plugin_options=args.plugin_options, model_uri=args.model_uri)


def plugin_settings(args):
    """``(settings, plugin)``: :func:`args_settings` and the plugin they name, the model URI checked."""
    from .models import check_model_uri

    settings = args_settings(args)
    plugin = load_plugin(settings.plugin, settings.plugin_class, settings.plugin_options)
    check_model_uri(settings.model_uri)
    return settings, plugin


def command_logging(verbose):
    """Logging for a command that reports each failure's reason itself: tracebacks only when ``verbose``."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("mlflow_pluggable_scoring_server.scoring").setLevel(logging.CRITICAL)


def expand(paths):
    """The files named by ``paths`` (files, folders, globs), each folder's files sorted."""
    files = []
    for path in paths:
        matched = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]
        if not matched:
            raise StartupError(f"no file matches '{path}'")
        for match in matched:
            if os.path.isdir(match):
                files += sorted(os.path.join(d, f) for d, _, names in os.walk(match) for f in names)
            elif os.path.isfile(match):
                files.append(match)
            else:
                raise StartupError(f"input '{match}' does not exist")
    return files


def rows_of(path):
    """The inputs of a JSON-lines or CSV file: ``(FILE:LINE, JSON body)``."""
    with open(path, newline="") as f:
        if path.endswith(LINE_SUFFIXES):
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{number}", line.strip().encode()
            return
        reader = csv.reader(f)
        columns = next(reader, [])
        for number, row in enumerate(reader, 2):
            if row:
                table = {"columns": columns, "data": [[number_or_text(value) for value in row]]}
                yield f"{path}:{number}", json.dumps(table).encode()


def number_or_text(value):
    try:
        return float(value)
    except ValueError:
        return value


def inputs(files, accepted, content_type=None):
    """``(input id, body, media type)`` for every input in ``files``; a file that cannot be
    read is an input whose body is the OSError."""
    for path in files:
        if path.endswith(LINE_SUFFIXES + ROW_SUFFIXES):
            for key, body in rows_of(path):
                yield key, body, content_type or JSON
            continue
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError as e:
            body = e
        yield path, body, content_type or content_type_for(path, accepted)


def count(files):
    """How many inputs ``files`` hold (for the progress bar)."""
    return sum(sum(1 for _ in rows_of(p)) if p.endswith(LINE_SUFFIXES + ROW_SUFFIXES) else 1 for p in files)


class Output:
    """The output file, opened for appending: JSON lines ``{"input", "prediction"}``, or CSV
    rows ``input,prediction...`` (one per row of the answer)."""

    def __init__(self, path, fmt):
        self.path, self.format = path, fmt
        self.done = self._read_done()
        self.file = open(path, "a", newline="")
        self.header = self.file.tell() > 0

    def _read_done(self):
        """The inputs already in the output; a line cut short by an interrupted run is dropped."""
        if not os.path.exists(self.path):
            return set()
        with open(self.path, "rb+") as f:
            text = f.read()
            if text and not text.endswith(b"\n"):
                f.truncate(text.rfind(b"\n") + 1)
                text = text[: text.rfind(b"\n") + 1]
        lines = text.decode().splitlines()
        if self.format == "csv":
            return {row[0] for row in csv.reader(lines[1:]) if row}
        return {json.loads(line)["input"] for line in lines if line.strip()}

    def write(self, key, answer):
        if self.format == "jsonl":
            self.file.write(json.dumps({"input": key, "prediction": json.loads(answer)}) + "\n")
        else:
            rows = list(csv.reader(io.StringIO(answer.decode())))
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            if not self.header:
                width = len(rows[0]) if rows else 1
                writer.writerow(["input"] + (["prediction"] if width == 1 else [f"prediction_{i}" for i in range(width)]))
                self.header = True
            writer.writerows([key, *row] for row in rows)
            self.file.write(out.getvalue())
        self.file.flush()

    def close(self):
        self.file.close()


# The progress meter, on a terminal and in a log alike: "[#####     ] 50/100  50% 60.31/s".
METER = "[{bar:30}] {n_fmt}/{total_fmt} {percentage:3.0f}% {rate_noinv_fmt}"
LOG_INTERVAL = 10  # seconds between two lines of progress in a log


class LogLines(tqdm):
    """tqdm for a stream that is not a terminal (a log, CI, a pipe): the meter as a line of its
    own every :data:`LOG_INTERVAL` seconds and one on closing, never a carriage return."""

    shown = 0  # the count the last line showed

    def __init__(self, **options):
        # The time checked at every input, not every so many; the rate is the average since the start.
        super().__init__(**options, mininterval=LOG_INTERVAL, miniters=1, smoothing=0)

    def display(self, msg=None, pos=None):
        if msg is not None or self.n == self.shown:  # tqdm erasing its bar; nothing new (as at the start)
            return False
        self.shown = self.n
        print(self, file=self.fp, flush=True)
        return True

    def clear(self, nolock=False):
        """Nothing to erase: the lines stay."""

    def close(self):
        if not self.disable:
            self.display()  # the last line (tqdm's own would end with a carriage return)
        self.leave = False
        super().close()

    @classmethod
    def write(cls, s, file=None, end="\n", nolock=False):
        print(s, end=end, file=file, flush=True)  # among the lines: no bar to erase and redraw


def progress_bar(total, enabled=True, file=None):
    """``score``'s progress on ``file`` (stderr): tqdm's bar on a terminal, :class:`LogLines` elsewhere.
    Print other lines with its ``write(line, file=file)``."""
    file = file or sys.stderr
    kind = tqdm if file.isatty() else LogLines
    return kind(total=total, file=file, disable=not enabled, bar_format=METER, ascii=" #", unit="")


def add_plugin_args(parser):
    """The flags naming the plugin, the model and the inputs' media type (for `score` and `spark-score`)."""
    parser.add_argument("--conf", help="the server's YAML conf file: plugin, plugin_class, plugin_options and model_uri "
                        "are read from it")
    add_plugin_flags(parser)
    parser.add_argument("--model-uri", help="MLflow model URI")
    parser.add_argument("--content-type",
                        help="media type of the input files (default: from each file's extension, else the plugin's first)")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="mlflow-pluggable-scoring-server score",
        description="Score files with a plugin and a model on this machine, without a server. "
        "Resumable: inputs already in the output are skipped.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files, folders or globs; .jsonl files are scored line by line, .csv files row by row")
    p.add_argument("--output", "-o", required=True, help="output file, appended to")
    p.add_argument("--format", choices=FORMATS, help="jsonl or csv (default: from the output's extension, else jsonl)")
    add_plugin_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="log the plugin's tracebacks when it fails")
    return p.parse_args(argv)


def main(argv=None):
    """``score``: score inputs one by one; exit status 1 when some could not be scored."""
    from .scoring import Scorer

    args = parse_args(argv)
    fmt = args.format or ("csv" if args.output.endswith(".csv") else "jsonl")
    command_logging(args.verbose)
    try:
        settings, plugin = plugin_settings(args)
        files = expand(args.inputs)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scorer = Scorer(plugin)
    try:
        scorer.load(settings.model_uri)
    except Exception as e:
        print(f"error: the plugin cannot load model '{settings.model_uri}': {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    output = Output(args.output, fmt)
    progress = progress_bar(count(files), enabled=not args.no_progress)
    scored = skipped = failed = 0
    try:
        for key, body, media_type in inputs(files, scorer.request_types, args.content_type):
            if key in output.done:
                skipped += 1
            elif isinstance(body, OSError):
                failed += 1
                progress.write(f"failed: {key}: cannot read it: {body.strerror}", file=sys.stderr)
            else:
                try:
                    answer, _ = scorer.score(body, media_type, FORMATS[fmt])
                except ScoringError as e:
                    failed += 1
                    progress.write(f"failed: {key}: {failure_reason(e)}", file=sys.stderr)
                else:
                    output.write(key, answer)
                    scored += 1
            progress.update()
    finally:
        progress.close()
        output.close()
    print(f"scored {scored}, skipped {skipped} already in {args.output}, failed {failed}", file=sys.stderr)
    return 1 if failed else 0
