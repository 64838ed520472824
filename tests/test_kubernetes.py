"""`kubernetes`: the manifests validate against the schemas a cluster checks them with, and their probes answer.

No cluster is reachable here, so what a cluster would check is checked offline:
- Deployment, Service, HorizontalPodAutoscaler: kubernetes-validate's strict JSON schemas (Kubernetes'
  OpenAPI, unknown fields refused), for Kubernetes 1.30 (the first with the preStop sleep action on
  by default) and the newest it ships.
- ClusterServingRuntime, InferenceService: a JSON schema made from the kserve SDK's generated API models
  (every field's name and type, the required ones, unknown fields refused), whose Kubernetes types
  (containers, probes, volumes, metadata) are the same strict Kubernetes schemas. The SDK's wheel is
  read, not installed: its dependencies would downgrade pandas and protobuf here.
- The containers' args build the server in-process (``serve``'s own parser), and every probe's path
  and the metrics path answer 200 on it.
"""

import ast
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import WINE, run_main
from kubernetes_validate.utils import all_versions, schema_contents
from packaging.version import Version
from referencing import Registry, Resource

from mlflow_pluggable_scoring_server import kubernetes
from mlflow_pluggable_scoring_server.locks import exclusive_lock
from mlflow_pluggable_scoring_server.webserver import args_settings, parse_args

IMAGE = "registry.example.com/team/wine-scoring:1.0"
KSERVE_SDK = "0.21.0"
# 1.30: the first with preStop's sleep action on by default; and the newest the package ships.
KUBERNETES_VERSIONS = (next(v for v in all_versions() if Version(v) >= Version("1.30")), all_versions()[-1])
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"  # the $id of kubernetes-validate's definitions
K8S_ALIASES = {"ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity"}
PLAIN_TYPES = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
               "bool": {"type": "boolean"}, "object": {}, "datetime": {"type": "string"}}


def write_manifests(tmp_path, *args):
    proc = run_main("kubernetes", "--image", IMAGE, *args, "--output", tmp_path)
    assert proc.returncode == 0, proc.stderr
    return {str(path.relative_to(tmp_path)): list(yaml.safe_load_all(path.read_text())) for path in tmp_path.rglob("*.yaml")}


def k8s_definitions(version):
    return schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)


def kserve_wheel():
    """The kserve SDK's wheel, downloaded once per machine without its dependencies."""
    folder = Path.home() / ".cache" / "mlflow-pluggable-scoring-server" / f"kserve-sdk-{KSERVE_SDK}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(f"{folder}.lock"):
        if not folder.exists():
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
            try:
                proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                                       "--dest", str(tmp), f"kserve=={KSERVE_SDK}"], check=False, capture_output=True, text=True)
                assert proc.returncode == 0, f"cannot download the kserve SDK's wheel:\n{proc.stderr}"
                tmp.rename(folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return next(folder.glob("kserve-*.whl"))


@pytest.fixture(scope="session")
def kserve_models():
    """``({model: (openapi_types, attribute_map, required attributes)}, API group)`` as the kserve SDK declares them."""
    models = {}
    with zipfile.ZipFile(kserve_wheel()) as wheel:
        for name in wheel.namelist():
            if not re.fullmatch(r"kserve/models/\w+\.py", name):
                continue
            source = wheel.read(name).decode()
            for cls in (node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)):
                tables = {node.targets[0].id: ast.literal_eval(node.value) for node in cls.body if isinstance(node, ast.Assign)
                          and getattr(node.targets[0], "id", None) in ("openapi_types", "attribute_map")}
                if tables:
                    required = re.findall(r"client_side_validation and (\w+) is None", ast.get_source_segment(source, cls))
                    models[cls.name] = (tables["openapi_types"], tables["attribute_map"], required)
        group = re.search(r'KSERVE_GROUP = "([^"]+)"', wheel.read("kserve/constants/constants.py").decode()).group(1)
    return models, group


def kserve_validator(models, group, api_version, kind, version):
    """A validator of KServe's ``kind``: its SDK model as a JSON schema, the Kubernetes types in it from kubernetes-validate."""
    k8s = k8s_definitions(version)
    defs = {}

    def schema(type_name):
        if type_name.startswith("list["):
            return {"type": "array", "items": schema(type_name[5:-1])}
        if type_name.startswith("dict(str, "):
            return {"type": "object", "additionalProperties": schema(type_name[10:-1])}
        if type_name in PLAIN_TYPES:
            return PLAIN_TYPES[type_name]
        if type_name in models:
            if type_name not in defs:
                defs[type_name] = {}  # being built: a model may contain itself
                types, keys, required = models[type_name]
                defs[type_name] = {"type": "object", "additionalProperties": False, "required": [keys[a] for a in required],
                                   "properties": {keys[a]: schema(t) for a, t in types.items()}}
            return {"$ref": f"#/$defs/{type_name}"}
        match = re.search(r"V(\d+(?:(?:alpha|beta)\d+)?)([A-Z]\w*)$", type_name)
        found = [K8S_ALIASES[type_name]] if type_name in K8S_ALIASES else \
            [key for key in k8s["$defs"] if match and key.endswith(f".v{match[1]}.{match[2]}")]
        # A type the SDK names but does not define (V1alpha1WorkerSpec in 0.21.0): a document using it fails.
        return {"$ref": f"{K8S_DEFINITIONS}#/$defs/{found[0]}"} if len(found) == 1 else False

    root = schema(f"{api_version.capitalize()}{kind}")
    document = {"allOf": [root, {"properties": {"apiVersion": {"const": f"{group}/{api_version}"}, "kind": {"const": kind}},
                                 "required": ["apiVersion", "kind", "metadata", "spec"]}],
                "$defs": defs}
    return jsonschema.Draft202012Validator(document, registry=Resource.from_contents(k8s) @ Registry())


def validate_kserve(doc, kserve_models, version):
    models, group = kserve_models
    api_version = doc["apiVersion"].rpartition("/")[2]
    kserve_validator(models, group, api_version, doc["kind"], version).validate(doc)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    return write_manifests(tmp_path_factory.mktemp("manifests"), "--model-uri", "s3://models/wine")


def test_the_manifests_are_the_five_documents(manifests):
    kinds = {path: [doc["kind"] for doc in docs] for path, docs in manifests.items()}
    assert kinds == {"kserve/clusterservingruntime.yaml": ["ClusterServingRuntime"],
                     "kserve/inferenceservice.yaml": ["InferenceService"],
                     "kubernetes/deployment.yaml": ["Deployment"], "kubernetes/service.yaml": ["Service"],
                     "kubernetes/horizontalpodautoscaler.yaml": ["HorizontalPodAutoscaler"]}
    assert all(doc["metadata"]["name"] == "wine-scoring" for docs in manifests.values() for doc in docs)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_documents_validate_against_the_kubernetes_schemas(manifests, version):
    for path, docs in manifests.items():
        if path.startswith("kubernetes/"):
            for doc in docs:
                kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kserve_documents_validate_against_kserves_api(manifests, kserve_models, version):
    for path, docs in manifests.items():
        if path.startswith("kserve/"):
            for doc in docs:
                validate_kserve(doc, kserve_models, version)


@pytest.mark.parametrize("path, change, where", [
    ("kserve/inferenceservice.yaml", lambda d: d["spec"]["predictor"]["model"].update(storageURI="s3://x"), "storageURI"),
    ("kserve/clusterservingruntime.yaml", lambda d: d["spec"]["supportedModelFormats"][0].update(autoSelect="yes"), "'yes'"),
    ("kserve/clusterservingruntime.yaml", lambda d: d["spec"]["containers"][0].update(readynessProbe={}), "readynessProbe"),
    ("kserve/clusterservingruntime.yaml", lambda d: d["spec"].pop("containers"), "'containers' is a required"),
    ("kubernetes/deployment.yaml", lambda d: d["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"].update(
        pause={"seconds": 5}), "pause"),
])
def test_the_validators_refuse_what_a_cluster_refuses(manifests, kserve_models, path, change, where):
    doc = yaml.safe_load(yaml.safe_dump(manifests[path][0]))
    change(doc)
    with pytest.raises(jsonschema.ValidationError, match=where):
        if path.startswith("kserve/"):
            validate_kserve(doc, kserve_models, KUBERNETES_VERSIONS[-1])
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_an_inferenceservice_with_modelformat_mlflow_runs_on_the_runtime(manifests):
    runtime = manifests["kserve/clusterservingruntime.yaml"][0]["spec"]
    model = manifests["kserve/inferenceservice.yaml"][0]["spec"]["predictor"]["model"]
    assert runtime["supportedModelFormats"] == [{"name": "mlflow", "version": "3", "autoSelect": True, "priority": 2}]
    assert runtime["protocolVersions"] == ["v2"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"] == {"name": "mlflow", "version": "3"} and model["runtime"] == "wine-scoring"
    assert model["storageUri"] == "s3://models/wine" and "args" not in model
    assert runtime["annotations"] == {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics"}


@pytest.mark.parametrize("model_uri, storage_uri, served", [
    ("s3://models/wine", "s3://models/wine", kubernetes.KSERVE_MODEL_DIR),  # fetched by KServe's storage initializer
    ("models:/wine/1", None, "models:/wine/1"),  # fetched by the server through MLflow
    (None, None, kubernetes.IMAGE_MODEL),  # the model inside the image
])
def test_the_server_on_kserve_serves_the_model_given(tmp_path, model_uri, storage_uri, served):
    found = write_manifests(tmp_path, *(["--model-uri", model_uri] if model_uri else []))
    runtime = found["kserve/clusterservingruntime.yaml"][0]["spec"]["containers"][0]
    model = found["kserve/inferenceservice.yaml"][0]["spec"]["predictor"]["model"]
    assert model.get("storageUri") == storage_uri
    # KServe runs the runtime's args followed by the InferenceService's, {{.Name}} replaced by its name.
    args = [a.replace("{{.Name}}", "wine-scoring") for a in runtime["args"] + model.get("args", [])]
    settings = args_settings(parse_args(args))
    assert (settings.model_uri, settings.model_name, settings.host, settings.port) == (served, "wine-scoring", "0.0.0.0", 8080)
    deployment_args = found["kubernetes/deployment.yaml"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert parse_args(deployment_args).model_uri == model_uri  # none: the image's conf file names it


def probed_paths(container):
    return [container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")]


def test_the_probes_and_metrics_answer_on_the_server_the_containers_run(tmp_path, shared_app):
    found = write_manifests(tmp_path, "--name", "wine", "--model-uri", WINE / "model")
    pod = found["kubernetes/deployment.yaml"][0]["spec"]["template"]
    server = pod["spec"]["containers"][0]
    runtime = found["kserve/clusterservingruntime.yaml"][0]["spec"]
    on_kserve = runtime["containers"][0]
    named = [text.replace("{{.Name}}", "wine") for text in on_kserve["args"] + probed_paths(on_kserve)]
    # On KServe, the model is the storage initializer's copy at /mnt/models: here the wine sample's folder.
    kserve_args = [a.replace(kubernetes.KSERVE_MODEL_DIR, str(WINE / "model")) for a in named[:len(on_kserve["args"])]]
    for args, paths, metrics in [
        (server["args"], probed_paths(server), pod["metadata"]["annotations"]["prometheus.io/path"]),
        (kserve_args, named[len(on_kserve["args"]):], runtime["annotations"]["prometheus.kserve.io/path"]),
    ]:
        app = shared_app(*args)
        assert app.settings.port == 8080 and app.settings.host == "0.0.0.0"
        assert {path: app.get(path).status_code for path in [*paths, metrics]} == dict.fromkeys([*paths, metrics], 200)
        assert "/v2/models/wine/ready" in paths and "scoring_requests_total" in app.get(metrics).text
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    pause = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert grace > pause + app.settings.graceful_timeout


def test_the_pods_run_as_non_root_on_a_read_only_root_with_tmp_writable(manifests):
    pod = manifests["kubernetes/deployment.yaml"][0]["spec"]["template"]["spec"]
    runtime = manifests["kserve/clusterservingruntime.yaml"][0]["spec"]
    for spec in (pod, runtime):
        container = spec["containers"][0]
        assert container["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        mount = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"]
        assert {v["name"]: v for v in spec["volumes"]}[mount] == {"name": mount, "emptyDir": {}}
    scaled = manifests["kubernetes/horizontalpodautoscaler.yaml"][0]["spec"]["scaleTargetRef"]
    assert scaled == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wine-scoring"}


@pytest.mark.parametrize("args, message", [
    (["--image", IMAGE, "--name", "Wine_Model"], "name 'Wine_Model' is not a DNS label (a-z, 0-9 and '-', starting with a letter, at most 63)"),
    (["--image", "registry.example.com/_:1"], "name '' is not a DNS label (a-z, 0-9 and '-', starting with a letter, at most 63); give --name"),
])
def test_bad_names_say_one_line(tmp_path, args, message):
    proc = run_main("kubernetes", *args, "--output", tmp_path)
    assert proc.returncode == 2 and proc.stderr == f"error: {message}\n" and not any(tmp_path.iterdir())


def test_an_output_that_cannot_be_written_says_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    proc = run_main("kubernetes", "--image", IMAGE, "--output", tmp_path / "file")
    assert proc.returncode == 2 and proc.stderr == f"error: cannot write to '{tmp_path / 'file'}': Not a directory\n"
