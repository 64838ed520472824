"""The built-in plugins, registered as entry points like any installed plugin:
``pyfunc`` (any MLflow model, the default) and ``image`` (image models, no code)."""
