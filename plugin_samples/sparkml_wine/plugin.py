"""Sample plugin: white-wine quality from a Spark ML pipeline, for a JSON table.

The request and response are those of the scikit-learn sample (pandas "split" JSON
in, one predicted quality per row out). The worker's SparkSession (local mode, one
core) is created when the model is loaded, never per request.
"""

from typing import NamedTuple

from mlflow_pluggable_scoring_server.decoders import read_split_frame
from mlflow_pluggable_scoring_server.models import fetch_model
from mlflow_pluggable_scoring_server.plugin import BasePlugin


class WinePipeline(NamedTuple):
    spark: object
    pipeline: object
    schema: object  # the feature columns, in the order the pipeline was trained on


class Plugin(BasePlugin):
    def load_model(self, model_uri):
        import mlflow.spark
        from pyspark.sql.types import DoubleType, StructField, StructType

        from mlflow_pluggable_scoring_server.spark import local_session

        spark = local_session("local[1]", "sparkml_wine", **{"spark.driver.memory": "512m", "spark.sql.shuffle.partitions": "1"})
        path, mlmodel = fetch_model(model_uri)
        schema = StructType([StructField(name, DoubleType()) for name in mlmodel.signature.inputs.input_names()])
        model = WinePipeline(spark, mlflow.spark.load_model(path), schema)
        score(model, [[0.0] * len(schema)])  # the first Spark job takes seconds: not on the first request
        return model

    def predict(self, model, data):
        return score(model, read_split_frame(data, columns=model.schema.fieldNames(), dtype="float64").tolist())

    def request_content_type(self):
        return "application/json"


def score(model, rows):
    """The pipeline's predictions for ``rows`` (lists of feature values), in order."""
    frame = model.spark.createDataFrame(rows, model.schema)
    return [row.prediction for row in model.pipeline.transform(frame).select("prediction").collect()]
