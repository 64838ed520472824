"""Loading plugins from files, and the contract third-party plugins compile against."""

import pytest

from conftest import MNIST, TEST_PLUGINS, WINE, WINE_ONNX
from mlflow_pluggable_scoring_server.errors import StartupError
from mlflow_pluggable_scoring_server.plugin import (
    BasePlugin,
    Payload,
    load_plugin,
    request_media_types,
    response_media_types,
)


@pytest.mark.parametrize(
    "path, request_types",
    [
        (WINE / "plugin.py", ["application/json"]),
        (WINE_ONNX / "plugin.py", ["application/json"]),
        (MNIST / "plugin.py", ["image/png", "image/jpeg", "application/octet-stream"]),
        (TEST_PLUGINS / "legacy_wine.py", ["application/json"]),
    ],
)
def test_sample_plugins_load(path, request_types):
    plugin = load_plugin(str(path), "plugin.Plugin")
    assert isinstance(plugin, BasePlugin)
    assert request_media_types(plugin) == request_types


def test_plugins_with_the_same_file_name_do_not_clash():
    wine = load_plugin(str(WINE / "plugin.py"))
    onnx = load_plugin(str(WINE_ONNX / "plugin.py"))
    assert type(wine).__module__ != type(onnx).__module__


def test_minimal_third_party_plugin_keeps_the_contract():
    plugin = load_plugin(str(TEST_PLUGINS / "third_party.py"), "third_party.Plugin")
    assert request_media_types(plugin) == ["text/plain", "application/octet-stream"]
    assert response_media_types(plugin) == ["application/json", "text/csv"]
    model = plugin.load_model("models:/anything/1")
    assert plugin.predict(model, Payload(b"abc", "text/plain")) == [3]


def test_payload_is_bytes_with_its_media_type():
    payload = Payload(b'{"a": 1}', "application/json", {"charset": "utf-8"})
    assert isinstance(payload, bytes) and payload == b'{"a": 1}'
    assert payload.decode("utf-8") == '{"a": 1}'
    assert (payload.media_type, payload.media_params) == ("application/json", {"charset": "utf-8"})


@pytest.mark.parametrize(
    "path, class_name, message",
    [
        (TEST_PLUGINS / "missing.py", "plugin.Plugin", "does not exist"),
        (TEST_PLUGINS / "third_party.py", "plugin.Nope", "plugin class 'plugin.Nope' not found"),
        (TEST_PLUGINS / "not_plugins.py", "plugin.Plugin", "is not a plugin"),
        (TEST_PLUGINS / "not_plugins.py", "plugin.HalfPlugin", "missing: predict, request_content_type"),
        (TEST_PLUGINS / "not_plugins.py", "plugin.NOT_A_CLASS", "is not a plugin"),
        (TEST_PLUGINS / "broken_import.py", "plugin.Plugin", "failed to import: ModuleNotFoundError"),
    ],
)
def test_bad_plugins_are_refused_with_one_line(path, class_name, message):
    with pytest.raises(StartupError) as e:
        load_plugin(str(path), class_name)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_abstract_plugin_cannot_be_used(tmp_path):
    path = tmp_path / "abstract.py"
    path.write_text(
        "from mlflow_pluggable_scoring_server.plugin import BasePlugin\n"
        "class Plugin(BasePlugin):\n"
        "    def load_model(self, uri): pass\n"
        "    def predict(self, model, data): pass\n"
    )
    with pytest.raises(StartupError, match="is not a plugin.*missing: request_content_type|cannot be used"):
        load_plugin(str(path))


class SaysYes(BasePlugin):
    load_model = predict = request_content_type = None

    def __init__(self, answer):
        self.answer = answer

    def fork_safe(self, model_uri):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_only_local_models_a_plugin_says_are_fork_safe_are_preloaded():
    """The master loads a model before the fork only when its URI is local and its plugin answers True."""
    from mlflow_pluggable_scoring_server.plugins.pyfunc import PyfuncPlugin
    from mlflow_pluggable_scoring_server.webserver import fork_safe

    pyfunc = PyfuncPlugin()
    assert fork_safe(pyfunc, str(WINE / "model")) and fork_safe(pyfunc, (WINE / "model").as_uri())  # scikit-learn
    assert not fork_safe(pyfunc, str(WINE_ONNX / "model"))  # ONNX Runtime
    assert not fork_safe(pyfunc, str(MNIST / "model"))  # TensorFlow
    assert not fork_safe(pyfunc, "models:/sklearn_wine/1")  # a registry connection would be shared: not even asked
    assert fork_safe(load_plugin(str(WINE / "plugin.py"), "plugin.Plugin"), str(WINE / "model"))
    assert not fork_safe(load_plugin(str(WINE_ONNX / "plugin.py"), "plugin.Plugin"), str(WINE_ONNX / "model"))  # the default
    assert not fork_safe(SaysYes("yes"), str(WINE / "model"))  # only True
    assert not fork_safe(SaysYes(RuntimeError("no idea")), str(WINE / "model"))
