"""2020 plugins keep working with today's libraries, unchanged.

pandas 3 reads a ``str`` given to ``read_json`` as a file path, where pandas 1 read it as JSON
text; 2020 plugins pass the request's text (``pd.read_json(data.decode("utf-8"),
orient="split")``) and would fail with "File name too long". In a process that loads plugins,
``pandas.read_json`` reads text that starts with ``{`` or ``[`` as JSON again; paths and
buffers are read as before. pandas is not imported for this: the change is made when
something first imports it.
"""

import functools
import importlib.abc
import importlib.util
import io
import sys


def legacy_json_text():
    """Make ``pandas.read_json`` take JSON text, now if pandas is imported, else when it is."""
    if "pandas" in sys.modules:
        _patch(sys.modules["pandas"])
    elif not any(isinstance(finder, _PandasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PandasFinder())


def _patch(pandas):
    original = pandas.read_json
    if getattr(original, "reads_json_text", False):
        return

    @functools.wraps(original)
    def read_json(path_or_buf, *args, **kwargs):
        if isinstance(path_or_buf, str) and path_or_buf.lstrip()[:1] in ("{", "["):
            path_or_buf = io.StringIO(path_or_buf)
        return original(path_or_buf, *args, **kwargs)

    read_json.reads_json_text = True
    pandas.read_json = read_json


class _PandasFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps the loader of pandas so that the change is made once pandas is loaded."""

    def find_spec(self, name, path, target=None):
        if name != "pandas":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("pandas")
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # pandas sees its own loader
        self.loader.exec_module(module)
        _patch(module)
