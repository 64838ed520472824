"""Train the sample models that are missing and save them as MLflow models.

    python plugin_samples/train_samples.py [--force] [--only sklearn_wine|onnx_wine|keras_mnist|sparkml_wine]

- sklearn_wine: a random forest predicting white-wine quality (UCI Wine Quality data).
- onnx_wine: the same forest exported to ONNX with skl2onnx.
- keras_mnist: a small Keras dense network for 28x28 digits taken flat (784 values, as the
  2020 sample's model took them), trained on scikit-learn's bundled 8x8 digits made to look
  like MNIST (no download needed).
- sparkml_wine: a Spark ML pipeline (VectorAssembler + LinearRegression) on the wine data,
  trained on local Spark and saved with ``mlflow.spark``.

A model is present when its ``MLmodel`` file exists; ``--force`` retrains it.
Training is deterministic, so the ONNX export always matches the saved forest.
"""

import argparse
import os
import shutil
import time
from importlib.metadata import version

HERE = os.path.dirname(os.path.abspath(__file__))
WINE_CSV = os.path.join(HERE, "data", "winequality-white.csv")
WINE_LABEL = "quality"
MODEL_DIRS = {
    "sklearn_wine": os.path.join(HERE, "sklearn_wine", "model"),
    "onnx_wine": os.path.join(HERE, "sklearn_wine", "onnx", "model"),
    "keras_mnist": os.path.join(HERE, "keras_mnist", "model"),
    "sparkml_wine": os.path.join(HERE, "sparkml_wine", "model"),
}
# skops refuses to load types outside its defaults unless they are listed here;
# MLflow stores the list in the MLmodel file and passes it back at load time.
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
SEED = 42


def pinned(*dists):
    """``name==version`` requirements for installed distributions."""
    return [f"{dist}=={version(dist)}" for dist in dists]


def is_present(name):
    return os.path.isfile(os.path.join(MODEL_DIRS[name], "MLmodel"))


def target_dir(name):
    """The model folder of ``name``, emptied: MLflow refuses to save into a non-empty one."""
    path = MODEL_DIRS[name]
    shutil.rmtree(path, ignore_errors=True)
    return path


def wine_data():
    """The wine features (float32, one column per feature), their names, and the labels."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(WINE_CSV)
    features = frame.drop(columns=WINE_LABEL)
    return features.to_numpy(np.float32), list(features.columns), frame[WINE_LABEL].to_numpy()


def train_forest():
    """Fit the wine forest on a plain array (no feature names, so numpy input never warns)."""
    from sklearn.ensemble import RandomForestRegressor

    x, features, y = wine_data()
    forest = RandomForestRegressor(n_estimators=100, random_state=SEED, n_jobs=1).fit(x, y)
    return forest, x, features


def save_sklearn_wine(forest, x, features):
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature

    # Column names in the signature tell MLflow (and the plugins) the feature order.
    signature = infer_signature(pd.DataFrame(x, columns=features), forest.predict(x))
    mlflow.sklearn.save_model(
        forest,
        target_dir("sklearn_wine"),
        signature=signature,
        input_example=pd.DataFrame(x[:3], columns=features),  # the API docs' example request
        pip_requirements=pinned("scikit-learn", "skops"),
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
    )


def export_onnx_wine(forest, x, features):
    import mlflow.onnx
    import pandas as pd
    from mlflow.models import infer_signature
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = to_onnx(forest, initial_types=[("float_input", FloatTensorType([None, x.shape[1]]))])
    signature = infer_signature(pd.DataFrame(x, columns=features), forest.predict(x).astype("float32"))
    mlflow.onnx.save_model(
        onnx_model,
        target_dir("onnx_wine"),
        signature=signature,
        input_example=pd.DataFrame(x[:3], columns=features),  # the API docs' example request
        pip_requirements=pinned("onnx", "onnxruntime"),
        onnx_execution_providers=["CPUExecutionProvider"],
    )


def mnist_like_digits():
    """scikit-learn's 8x8 digits as 28x28 MNIST-style images (0..255), with their labels."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Like MNIST: the digit fills a 20x20 box centred in a 28x28 frame.
    boxes = [Image.fromarray((d * 255 / 16).astype(np.uint8)) for d in digits.images]
    boxes = [np.asarray(box.resize((20, 20), Image.BILINEAR)) for box in boxes]
    return np.stack([np.pad(box, 4) for box in boxes]), digits.target


def shifted_copies(images, labels, copies, rng):
    """The images plus ``copies`` copies moved by up to 2 px each way (the padding absorbs the roll)."""
    import numpy as np

    out_images, out_labels = [images], [labels]
    for _ in range(copies):
        shifts = rng.integers(-2, 3, size=(len(images), 2))
        out_images.append(np.stack([np.roll(im, tuple(s), axis=(0, 1)) for im, s in zip(images, shifts)]))
        out_labels.append(labels)
    return np.concatenate(out_images), np.concatenate(out_labels)


def train_keras_mnist():
    """Train the digit classifier (a few seconds) and save it with MLflow's Keras 3 flavor."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import mlflow.keras
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    import tensorflow as tf

    # The same weights on every run and machine load: deterministic kernels, and one thread
    # so that float sums are always added in the same order.
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(SEED)
    images, labels = shifted_copies(*mnist_like_digits(), copies=4, rng=np.random.default_rng(SEED))
    # A flat input of 784 values, as the 2020 sample's model had: its plugin sends
    # np.resize(image, (1, 28 * 28)), and plugins written for it must keep working.
    model = keras.Sequential(
        [
            keras.Input((28 * 28,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = images.reshape(len(images), 28 * 28).astype(np.float32) / 255.0
    model.fit(x, labels, epochs=10, batch_size=64, shuffle=True, verbose=0)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 28 * 28))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
    )
    mlflow.keras.save_model(
        model,
        target_dir("keras_mnist"),
        signature=signature,
        pip_requirements=pinned("keras", "tensorflow"),
    )


def train_sparkml_wine():
    """Fit the wine pipeline on local Spark (one core, so the same model every time) and save it."""
    import mlflow.spark
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import functions as F

    from mlflow_pluggable_scoring_server.spark import local_session

    spark = local_session("local[1]", "train_samples", **{"spark.driver.memory": "1g"})
    frame = spark.read.csv(WINE_CSV, header=True)
    features = [name for name in frame.columns if name != WINE_LABEL]
    frame = frame.select(*[F.col(f"`{name}`").cast("double") for name in frame.columns])
    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=features, outputCol="features"),
        LinearRegression(featuresCol="features", labelCol=WINE_LABEL, solver="normal"),
    ])
    # The signature's column names tell the plugin the feature order.
    signature = ModelSignature(Schema([ColSpec("double", name) for name in features]), Schema([ColSpec("double")]))
    mlflow.spark.save_model(pipeline.fit(frame), target_dir("sparkml_wine"), signature=signature,
                            pip_requirements=pinned("pyspark"))


def train_wine(names):
    """Save the wine models in ``names``; the ONNX one exports the saved forest when there is one."""
    start = time.perf_counter()
    if "sklearn_wine" in names or not is_present("sklearn_wine"):
        forest, x, features = train_forest()
    else:
        import mlflow.sklearn

        forest = mlflow.sklearn.load_model(MODEL_DIRS["sklearn_wine"])
        x, features, _ = wine_data()
    if "sklearn_wine" in names:
        save_sklearn_wine(forest, x, features)
        start = report("sklearn_wine", start)
    if "onnx_wine" in names:
        export_onnx_wine(forest, x, features)
        report("onnx_wine", start)


def report(name, start):
    """Print that ``name`` was saved, with the time taken since ``start``; return the time now."""
    now = time.perf_counter()
    print(f"{name}: saved to {shown(MODEL_DIRS[name])} ({now - start:.1f} s)", flush=True)
    return now


def shown(path):
    return os.path.relpath(path, os.path.dirname(HERE))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--force", action="store_true", help="retrain models that are present")
    parser.add_argument("--only", choices=MODEL_DIRS, help="handle only this model")
    args = parser.parse_args(argv)

    todo = []
    for name in [args.only] if args.only else MODEL_DIRS:
        if args.force or not is_present(name):
            todo.append(name)
        else:
            print(f"{name}: present in {shown(MODEL_DIRS[name])}, skipped (--force retrains it)", flush=True)
    if wine := [name for name in todo if name in ("sklearn_wine", "onnx_wine")]:
        train_wine(wine)
    if "keras_mnist" in todo:
        start = time.perf_counter()
        train_keras_mnist()
        report("keras_mnist", start)
    if "sparkml_wine" in todo:
        start = time.perf_counter()
        train_sparkml_wine()
        report("sparkml_wine", start)


if __name__ == "__main__":
    main()
