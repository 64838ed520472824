"""Register the trained sample models in an MLflow Model Registry.

    python plugin_samples/register_samples.py [--tracking-uri sqlite:///mlflow.db]

Each sample model is logged to a run of the experiment ``plugin_samples`` and registered
as a new version of ``sklearn_wine``, ``onnx_wine`` and ``keras_mnist``, with the alias
``champion`` and the stage ``Production``. Prints one line per model: name, version, run id.
"""

import argparse
import os
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {
    "sklearn_wine": os.path.join(HERE, "sklearn_wine", "model"),
    "onnx_wine": os.path.join(HERE, "sklearn_wine", "onnx", "model"),
    "keras_mnist": os.path.join(HERE, "keras_mnist", "model"),
}


def register(tracking_uri=None):
    """Register every sample model; returns ``{name: (version, run_id)}``."""
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    experiment = mlflow.set_experiment("plugin_samples").experiment_id
    registered = {}
    for name, path in MODELS.items():
        if not os.path.isfile(os.path.join(path, "MLmodel")):
            raise SystemExit(f"error: {path} has no model; run plugin_samples/train_samples.py first")
        with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
            mlflow.log_artifacts(path, artifact_path="model")
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version
        client.set_registered_model_alias(name, "champion", version)
        with warnings.catch_warnings():  # stages are deprecated in MLflow 3, still supported
            warnings.simplefilter("ignore")
            client.transition_model_version_stage(name, version, "Production")
        registered[name] = (version, run.info.run_id)
    return registered


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tracking-uri", help="tracking/registry URI (default: MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    for name, (version, run_id) in register(args.tracking_uri).items():
        print(f"{name}: version {version}, run {run_id}")


if __name__ == "__main__":
    main()
