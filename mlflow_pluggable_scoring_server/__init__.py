"""MLflow pluggable scoring server: serve any MLflow model through a small plugin class."""

__version__ = "0.2.0"
