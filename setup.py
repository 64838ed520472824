import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("mlflow_pluggable_scoring_server/__init__.py").read_text()).group(1)

setup(
    name="mlflow-pluggable-scoring-server",
    version=version,
    description="Serve MLflow models through plugins: any request body in, JSON, CSV or images out.",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["mlflow_pluggable_scoring_server", "mlflow_pluggable_scoring_server.*"]),
    package_data={"mlflow_pluggable_scoring_server": ["Dockerfile"]},  # for docker-build
    install_requires=[
        "mlflow==3.17.2",
        "flask>=3.0,<4",
        "flask-restx>=1.3,<2",
        "gunicorn>=23",
        "httptools>=0.6",  # llhttp: the worker reads plain requests that arrived whole itself (inline_http.py)
        "pyyaml>=6",
        "numpy>=1.26",
        "pillow>=10",
        "prometheus-client>=0.20",
        "virtualenv>=20",  # --env-manager virtualenv
        "tqdm>=4.66",  # score's progress bar: redrawn on a terminal, plain lines in a log
    ],
    extras_require={
        # What the samples and the test suite need on top of the server.
        "samples": ["scikit-learn>=1.5", "skl2onnx>=1.17", "onnx>=1.16", "onnxruntime>=1.18", "tensorflow>=2.16", "pandas>=2",
                    "pyspark>=4.0,<4.3"],  # the Spark ML sample and spark-score; needs Java 17
        "test": ["pytest>=8", "requests>=2.31", "openapi-spec-validator>=0.7", "schemathesis>=4",
                 "setuptools>=61", "wheel",  # the test plugin package is built offline
                 "pytest-xdist>=3.6",  # 3 test processes: most tests wait on servers, 2 cores stay busy
                 # V2 requests and responses as a real client writes and reads them (binary tensors too);
                 # the kserve SDK is left out: it would downgrade pandas to 2 and protobuf
                 "tritonclient[http]>=2.50",
                 # Kubernetes' OpenAPI schemas as JSON schemas, per Kubernetes version: the `kubernetes` command's
                 # manifests are validated offline (KServe's types: the kserve SDK's wheel, read, not installed)
                 "kubernetes-validate>=1.37"],
    },
    entry_points={
        "console_scripts": ["mlflow-pluggable-scoring-server = mlflow_pluggable_scoring_server.cli:main"],
        # Plugins chosen by name (--plugin NAME); other packages add theirs to this group.
        "mlflow_pluggable_scoring_server.plugins": [
            "pyfunc = mlflow_pluggable_scoring_server.plugins.pyfunc:PyfuncPlugin",
            "image = mlflow_pluggable_scoring_server.plugins.image:ImagePlugin",
        ],
        # `mlflow deployments ... -t pluggable`: local servers managed through MLflow's deployments API.
        "mlflow.deployments": ["pluggable = mlflow_pluggable_scoring_server.deployments"],
    },
)
