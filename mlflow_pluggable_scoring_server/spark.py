"""Batch scoring on Spark with the same plugin the server uses.

    mlflow-pluggable-scoring-server spark-score --conf plugin_samples/keras_mnist/conf.yaml \\
        --output predictions.parquet 'digits/*.png'

:func:`plugin_udf` wraps a plugin and a model in a Spark UDF: each executor's Python
worker loads the model once and scores every row through the server's own request
path (:class:`~mlflow_pluggable_scoring_server.scoring.Scorer`), so a row gets
exactly the answer the server would give for the same body. pyspark is imported
only when a function here needs it: the server itself never does, and a plugin that
uses Spark (the Spark ML sample) starts it in ``load_model``, in the worker.
"""

import argparse
import json
import os
import sys

from .errors import ScoringError, StartupError
from .media import JSON
from .models import local_path
from .offline import add_plugin_args, content_type_for, failure_reason, plugin_settings
from .plugin import DEFAULT_PLUGIN_CLASS, is_plugin_file, load_plugin, request_media_types

RESULT_SCHEMA = "prediction string, error string"
TEXT_SUFFIXES = (".jsonl", ".ndjson")

# The loaded scorers of this Python worker, by (plugin file, class, model URI):
# Spark reuses its Python workers, so each loads a model once, not once per task.
_scorers = {}


def local_session(master="local[*]", app_name="mlflow-pluggable-scoring-server", **conf):
    """The SparkSession of this process, created quietly if there is none yet.

    No UI, no console progress bar, ERROR logs; a ``local`` master binds to the
    loopback address only. Spark's Python workers run this interpreter unless
    ``PYSPARK_PYTHON`` says otherwise. ``conf`` entries are Spark settings, e.g.
    ``**{"spark.driver.memory": "512m"}``.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    settings = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", **conf}
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        settings.setdefault("spark.driver.bindAddress", "127.0.0.1")
        settings.setdefault("spark.driver.host", "127.0.0.1")
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _scorer(plugin, plugin_class, options, model_uri):
    """This worker's scorer for the plugin and model, loaded on first use."""
    from .scoring import Scorer

    key = (plugin, plugin_class, json.dumps(options, sort_keys=True), model_uri)
    if key not in _scorers:
        scorer = Scorer(load_plugin(plugin, plugin_class, options))
        scorer.load(model_uri)
        _scorers[key] = scorer
    return _scorers[key]


def plugin_udf(plugin, model_uri, plugin_class=DEFAULT_PLUGIN_CLASS, content_type=None, accept=JSON, options=None):
    """A Spark UDF scoring a column of request bodies with a plugin and a model.

    :param plugin: path of the plugin's Python file or name of an installed plugin, as in
        the server's conf; it and ``model_uri`` must be readable where the executors run.
    :param options: the plugin's options (``plugin_options``).
    :param content_type: the media type the bodies are sent as; by default the
        plugin's first request type, or one guessed from a file name column.
    :param accept: the answer's media type (a text type: JSON or CSV).
    :return: a UDF taking a binary or string column (and optionally a column of
        file names, to pick each row's media type from its extension) and returning
        ``struct<prediction: string, error: string>``: the server's answer, or why the
        row could not be scored (the row's ``prediction`` is then null).

    The plugin is checked here, on the driver; the model is loaded once per executor
    Python worker, on first use.
    """
    from pyspark.sql.functions import udf

    if is_plugin_file(plugin):
        plugin = os.path.abspath(plugin)
    if local_path(model_uri) is not None:  # executors' Python workers may run in another folder
        model_uri = os.path.abspath(local_path(model_uri))
    accepted = request_media_types(load_plugin(plugin, plugin_class, options))

    def score(body, name=None):
        if body is None:
            return None, "the input is null"
        body = body.encode() if isinstance(body, str) else bytes(body)
        media_type = content_type or content_type_for(name, accepted)
        try:
            answer, _ = _scorer(plugin, plugin_class, options, model_uri).score(body, media_type, accept)
        except ScoringError as e:
            return None, failure_reason(e)
        return answer.decode(), None

    return udf(score, RESULT_SCHEMA)


def read_inputs(spark, paths):
    """A DataFrame ``(input, body, name)`` of what to score under ``paths`` (files, folders, globs).

    JSON-lines files give one row per line (``input`` is ``FILE:LINE``); any other file
    is one row, its bytes (``input`` is its path).
    """
    from pyspark.sql import functions as F

    text = [p for p in paths if p.endswith(TEXT_SUFFIXES)]
    files = [p for p in paths if not p.endswith(TEXT_SUFFIXES)]
    frames = []
    if files:
        binary = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(files)
        frames.append(binary.select(F.col("path").alias("input"), F.col("content").alias("body"), F.col("path").alias("name")))
    for path in text:
        lines = spark.sparkContext.textFile(path).zipWithIndex().filter(lambda pair: pair[0].strip())
        rows = lines.map(lambda pair, path=path: (f"{path}:{pair[1] + 1}", bytearray(pair[0].encode()), None))
        frames.append(spark.createDataFrame(rows, "input string, body binary, name string"))
    frame = frames[0]
    for other in frames[1:]:
        frame = frame.unionByName(other)
    return frame


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="mlflow-pluggable-scoring-server spark-score",
        description="Score files with a plugin and a model on Spark; write Parquet or JSON lines. "
        "Each row is scored as the server would score it as a request body.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files, folders or globs (quoted, for Spark to expand); .jsonl files are scored line by line")
    p.add_argument("--output", "-o", required=True, help="output folder (Spark writes part files into it)")
    p.add_argument("--format", choices=("parquet", "json"), default="parquet",
                   help="parquet (default), or json: JSON lines")
    add_plugin_args(p)
    p.add_argument("--accept", default=JSON, choices=(JSON, "text/csv"), help="media type of the predictions")
    p.add_argument("--master", default="local[*]", help="Spark master (default local[*])")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    return p.parse_args(argv)


def main(argv=None):
    """``spark-score``: score inputs on Spark; exit status 1 when some could not be scored."""
    args = parse_args(argv)
    try:
        settings, _ = plugin_settings(args)  # plugin_udf loads the plugin again, for the executors
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from pyspark.sql import functions as F

    spark = local_session(args.master, "mlflow-pluggable-scoring-server spark-score")
    score = plugin_udf(settings.plugin, settings.model_uri, settings.plugin_class, args.content_type, args.accept,
                       settings.plugin_options)
    inputs = read_inputs(spark, [os.path.abspath(p) if "://" not in p else p for p in args.inputs])
    scored = inputs.select("input", score("body", "name").alias("result")).select("input", "result.*").cache()
    scored.write.mode("overwrite" if args.overwrite else "errorifexists").format(args.format).save(args.output)
    failed = scored.filter(F.col("error").isNotNull()).select("input", "error").collect()
    total = scored.count()
    for row in failed:
        print(f"failed: {row.input}: {row.error}", file=sys.stderr)
    print(f"scored {total - len(failed)} of {total} inputs into {args.output}" + (f"; {len(failed)} failed" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0
