"""``check-plugin``: does a plugin keep the server's contract with a given model?

    mlflow-pluggable-scoring-server check-plugin --plugin-file plugin.py --model-uri model \\
        --sample request.json

It loads the plugin and the model as the server does, sends the sample through the
server's request path (:class:`~mlflow_pluggable_scoring_server.scoring.Scorer`) once per
response media type, then malformed bodies, and prints a line per check: ``PASS``,
``FAIL`` (the server would break the API: a 500, an answer it cannot encode),
``SKIP`` (not applicable) or ``WARN`` (allowed, but maybe not meant). Exit status: 0
without FAIL, 1 with, 2 when the command line or the model URI cannot be used.
"""

import argparse
import json
import random
import re
import sys
import time

from .errors import NotAcceptable, ScoringError, StartupError
from .media import ENCODERS, JSON, is_json, matches, parse_media_type
from .offline import add_plugin_args, args_settings, command_logging, content_type_for, failure_reason
from .plugin import BasePlugin, load_plugin

TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]*"
MEDIA_TYPE = re.compile(rf"{TOKEN}/{TOKEN}")
MEDIA_RANGE = re.compile(rf"\*/\*|{TOKEN}/(\*|{TOKEN})")
# Bytes no plugin should score: no image signature, not UTF-8, not JSON.
RANDOM_BYTES = b"\x00\x9f" + random.Random(0).randbytes(62)
OTHER_JSON = b'{"unexpected": [1, 2, 3]}'


class Report:
    """Prints one line per check and counts the outcomes."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.counts = {"PASS": 0, "FAIL": 0, "SKIP": 0, "WARN": 0}

    def __call__(self, outcome, check, detail):
        self.counts[outcome] += 1
        print(f"{outcome} {check}: {detail}", file=self.stream, flush=True)

    def summary(self):
        c = self.counts
        return f"check-plugin: {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped, {c['WARN']} warnings"


def check_declarations(plugin, report):
    """The plugin's request and response media types; False when the server cannot use them at all."""
    usable = True
    response_method = getattr(plugin, "response_content_types", None)  # 2020 plugins may lack it: the default
    for check, declared, pattern in (
        ("request media types", plugin.request_content_type(), MEDIA_RANGE),  # one type, a list, wildcards
        ("response media types", response_method() if callable(response_method) else BasePlugin.response_content_types(plugin),
         MEDIA_TYPE),  # a list of exact types
    ):
        types = [declared] if pattern is MEDIA_RANGE and isinstance(declared, str) else declared
        if not isinstance(types, (list, tuple)) or not types or not all(isinstance(t, str) for t in types):
            report("FAIL", check, f"must be a non-empty list of media types, not {declared!r}")
            usable = False
            continue
        bad = [t for t in types if not pattern.fullmatch(parse_media_type(t)[0])]
        if bad:
            form = "type/subtype" if pattern is MEDIA_RANGE else "type/subtype, no wildcard"
            report("FAIL", check, "; ".join(f"{t!r} is not a media type ({form})" for t in bad))
            continue
        if pattern is MEDIA_TYPE:  # the server encodes these; others must come from predict as bytes
            types = [t if parse_media_type(t)[0] in ENCODERS else f"{t} (no encoder: predict must return bytes)" for t in types]
        report("PASS", check, ", ".join(types))
    return usable


def check_answer(scorer, report, check, body, content_type, accept):
    """Score ``body`` as the server would and report the outcome as a valid request's."""
    try:
        answer, _ = scorer.score(body, content_type, accept)
    except NotAcceptable as e:  # e.g. CSV of a prediction that is not a table: a 406, not a fault
        report("SKIP", check, f"406 for this sample: {e.message}")
        return
    except ScoringError as e:
        report("FAIL", check, f"{e.status_code.value}: {failure_reason(e)}")
        return
    if accept == JSON:
        try:
            json.loads(answer)
        except ValueError:
            report("FAIL", check, "the answer is not valid JSON (a str from predict is sent as it is)")
            return
    report("PASS", check, f"200, {len(answer)} bytes")


def check_refusal(scorer, report, check, body, content_type):
    """Score a malformed ``body``: it must be refused with a 4xx, never a 500."""
    try:
        scorer.score(body, content_type, None)
    except ScoringError as e:
        if e.status_code < 500:
            report("PASS", check, f"{e.status_code.value}: {e.message}")
        else:
            report("FAIL", check, f"{e.status_code.value} instead of 400 (InvalidInput): {failure_reason(e)}")
        return
    report("WARN", check, "scored (200): fine if any such body is valid input")


def run_checks(settings, sample, content_type, report):
    """All the checks, in order; stops when the plugin or the model cannot be loaded."""
    from .scoring import Scorer

    try:
        plugin = load_plugin(settings.plugin, settings.plugin_class, settings.plugin_options)
    except StartupError as e:
        report("FAIL", "plugin", str(e))
        return
    report("PASS", "plugin", f"{type(plugin).__name__} from {settings.plugin}")
    if not check_declarations(plugin, report):
        return
    scorer = Scorer(plugin, timeout=settings.request_timeout)
    started = time.monotonic()
    try:
        scorer.load(settings.model_uri)
    except Exception as e:
        report("FAIL", "load_model", f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
        return
    report("PASS", "load_model", f"{settings.model_uri} in {time.monotonic() - started:.1f} s")

    path, body = sample or (None, None)
    example = scorer.example() if body is None else None
    if example:
        body, content_type = example[0], content_type or example[1]
        report("PASS", "example_request", f"{len(body)} bytes of {example[1]}, sent as the sample")
    content_type = content_type or content_type_for(path, scorer.request_types)
    if not any(matches(pattern, parse_media_type(content_type)[0]) for pattern in scorer.request_types):
        report("FAIL", "content type", f"{content_type} is not one of the plugin's request media types")
        return
    if body is None:
        report("SKIP", "sample", "no --sample given and no example_request in the plugin; give one to check predictions")
    for accept in scorer.response_types if body is not None else ():
        check_answer(scorer, report, f"sample as {content_type}, answer as {accept}", body, content_type, accept)
    # An empty body never reaches the plugin: the server refuses it itself.
    malformed = [("random bytes", RANDOM_BYTES)]
    if body is not None and len(body) > 1:
        malformed.append(("truncated sample", body[: len(body) // 2]))
    if is_json(content_type):
        malformed.append(("JSON of another shape", OTHER_JSON))
    for name, bad in malformed:
        check_refusal(scorer, report, f"{name} as {content_type}", bad, content_type)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="mlflow-pluggable-scoring-server check-plugin",
        description="Check that a plugin keeps the server's contract with a model: declared media types, "
        "answers the server can send, malformed input refused with 400. Exit status 1 when a check fails.",
    )
    add_plugin_args(p)
    p.add_argument("--sample", metavar="FILE", help="a request body the plugin should score (sent as --content-type, "
                   "by default the media type of its extension); by default the plugin's example_request, if any")
    p.add_argument("--verbose", action="store_true", help="log the plugin's tracebacks when it fails")
    return p.parse_args(argv)


def main(argv=None):
    """``check-plugin``: run the checks; exit 0 if none failed, 1 if one did, 2 for a usage error."""
    from .decoders import limit_image_pixels
    from .models import check_model_uri

    args = parse_args(argv)
    command_logging(args.verbose)  # each failure's reason is in its FAIL line
    try:
        settings = args_settings(args)  # the plugin is loaded by the checks, which report its failure
        check_model_uri(settings.model_uri)
        sample = None
        if args.sample:
            try:
                with open(args.sample, "rb") as f:
                    sample = (args.sample, f.read())
            except OSError as e:
                raise StartupError(f"cannot read sample '{args.sample}': {e.strerror}") from None
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    limit_image_pixels(settings.max_image_pixels)  # as the server's workers do
    report = Report()
    run_checks(settings, sample, args.content_type, report)
    print(report.summary())
    return 1 if report.counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
