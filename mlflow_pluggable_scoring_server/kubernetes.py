"""Kubernetes and KServe manifests that run an image of the server.

    mlflow-pluggable-scoring-server kubernetes --image IMAGE [--model-uri URI] [--name NAME] --output DIR

writes, in DIR:

- ``kserve/clusterservingruntime.yaml``: a KServe ClusterServingRuntime for the ``mlflow`` model
  format (version 3) and the V2 protocol, at a higher priority than KServe's own kserve-mlserver
  runtime: an InferenceService with ``modelFormat: mlflow`` and ``protocolVersion: v2`` runs on
  IMAGE, its model (``storageUri``) put at /mnt/models by KServe's storage initializer;
- ``kserve/inferenceservice.yaml``: an InferenceService serving URI on that runtime;
- ``kubernetes/``: a Deployment, its Service and a HorizontalPodAutoscaler, without KServe.

Both run the image's own entrypoint and give it flags only (the image's conf file keeps the
plugin), listening on 8080, as a non-root user on a read-only root filesystem with an emptyDir
at /tmp: the only place the server writes (Prometheus' samples, models fetched by MLflow).
"""

import argparse
import math
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

from . import __version__
from .config import FIELDS
from .errors import StartupError

PORT = 8080  # KServe's port for a runtime's container
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the model of storageUri
# The storageUri schemes KServe's storage initializer fetches; an MLflow URI (models:/, runs:/) the server fetches itself.
KSERVE_STORAGE_SCHEMES = ("gs", "s3", "pvc", "https", "http", "hdfs", "webhdfs", "oci", "hf")
IMAGE_MODEL = "model"  # the model inside a docker-build image: model/ beside its conf.yaml, in its working directory
MODEL_FORMAT = {"name": "mlflow", "version": "3"}
RUNTIME_PRIORITY = 2  # kserve-mlserver's for mlflow is 1: ours is chosen for `modelFormat: mlflow` with no version
PRE_STOP_SECONDS = 5  # for the Service's endpoints to drop the pod before SIGTERM stops it taking connections
LOAD_SECONDS = 600  # the longest a model may take to load before the pod is restarted
METRICS_PATH = "/metrics"
NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1035 label, as Services and InferenceServices need
GRACEFUL_TIMEOUT = math.ceil(FIELDS["graceful_timeout"].default)
SECURITY_CONTEXT = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]}}
RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
TMP_VOLUME = {"name": "tmp", "emptyDir": {}}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="mlflow-pluggable-scoring-server kubernetes",
        description="Write Kubernetes and KServe manifests that run an image of the server (built by docker-build).",
    )
    p.add_argument("--image", required=True, help="The image, as the cluster pulls it (registry/name:tag).")
    p.add_argument("--model-uri", metavar="URI",
                   help=f"The model: the InferenceService's storageUri when KServe fetches it ({', '.join(KSERVE_STORAGE_SCHEMES)}),"
                        " else given to the server, which fetches it through MLflow (models:/, runs:/, a path in the image);"
                        " the Deployment's --model-uri. Default: the model inside the image.")
    p.add_argument("--name", help="Name of the workloads and of the runtime (a DNS label). Default: the image's name.")
    p.add_argument("--output", required=True, metavar="DIR", help="Folder to write the manifests to (files there are replaced).")
    return p.parse_args(argv)


def default_name(image):
    """``wine-scoring`` for ``registry:5000/team/wine-scoring:1.0``."""
    base = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")


def server_args(model_uri, model_name):
    """The flags the container gives the image's entrypoint: explicit, so the manifests hold whatever the image's conf says."""
    args = ["--host=0.0.0.0", f"--port={PORT}", f"--model-name={model_name}", f"--graceful-timeout={GRACEFUL_TIMEOUT}"]
    return args + ([f"--model-uri={model_uri}"] if model_uri else [])


def http_probe(path, period, failures, timeout):
    return {"httpGet": {"path": path, "port": PORT}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": timeout}


def container(name, image, args, model_name):
    """The server's container: probes on the V2 paths, non-root, read-only root, /tmp writable."""
    return {
        "name": name, "image": image, "args": args,
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        # A worker takes no connection before its model is loaded: until then only the startup probe runs.
        "startupProbe": http_probe("/v2/health/ready", 5, LOAD_SECONDS // 5, 2),
        "readinessProbe": http_probe(f"/v2/models/{model_name}/ready", 5, 2, 3),
        "livenessProbe": http_probe("/v2/health/live", 10, 3, 5),
        "securityContext": SECURITY_CONTEXT,
        "resources": RESOURCES,
        "volumeMounts": [{"name": TMP_VOLUME["name"], "mountPath": "/tmp"}],
    }


def serving_runtime(name, image):
    return {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ClusterServingRuntime",
        "metadata": {"name": name},
        "spec": {
            # KServe turns these into the pod's Prometheus annotations (with enable-prometheus-scraping).
            "annotations": {"prometheus.kserve.io/port": str(PORT), "prometheus.kserve.io/path": METRICS_PATH},
            "supportedModelFormats": [{**MODEL_FORMAT, "autoSelect": True, "priority": RUNTIME_PRIORITY}],
            "protocolVersions": ["v2"],
            # KServe replaces {{.Name}} with the InferenceService's name, in the args and the probes alike.
            "containers": [container("kserve-container", image, server_args(KSERVE_MODEL_DIR, "{{.Name}}"), "{{.Name}}")],
            "volumes": [TMP_VOLUME],
        },
    }


def inference_service(name, model_uri):
    model = {"modelFormat": MODEL_FORMAT, "protocolVersion": "v2", "runtime": name}
    if model_uri and urlparse(model_uri).scheme in KSERVE_STORAGE_SCHEMES:
        model["storageUri"] = model_uri
    else:  # KServe adds these args after the runtime's: this --model-uri wins over /mnt/models
        model["args"] = [f"--model-uri={model_uri or IMAGE_MODEL}"]
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {"serving.kserve.io/enable-prometheus-scraping": "true"}},
        "spec": {"predictor": {"model": model}},
    }


def deployment(name, image, model_uri):
    labels = {"app.kubernetes.io/name": name}
    server = container("server", image, server_args(model_uri, name), name)
    server["lifecycle"] = {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {  # no replicas: the HorizontalPodAutoscaler sets them
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": METRICS_PATH}},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    # The pause, then the server's drain of the requests in flight, then a margin before SIGKILL.
                    "terminationGracePeriodSeconds": PRE_STOP_SECONDS + GRACEFUL_TIMEOUT + 10,
                    "containers": [server],
                    "volumes": [TMP_VOLUME],
                },
            },
        },
    }


def service(name):
    labels = {"app.kubernetes.io/name": name}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": PORT, "protocol": "TCP"}]}}


def autoscaler(name):
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
        },
    }


def manifests(image, model_uri, name):
    """``{relative path: document}`` for every manifest."""
    return {
        "kserve/clusterservingruntime.yaml": serving_runtime(name, image),
        "kserve/inferenceservice.yaml": inference_service(name, model_uri),
        "kubernetes/deployment.yaml": deployment(name, image, model_uri),
        "kubernetes/service.yaml": service(name),
        "kubernetes/horizontalpodautoscaler.yaml": autoscaler(name),
    }


def write(output, documents):
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):  # a mapping used twice is written twice, not as &id001 and *id001
            return True

    header = f"# Written by mlflow-pluggable-scoring-server {__version__} kubernetes.\n"
    for path, doc in documents.items():
        target = Path(output) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(header + yaml.dump(doc, Dumper=Dumper, sort_keys=False))
        print(f"kubernetes: wrote {target} ({doc['kind']} {doc['metadata']['name']})")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    name = args.name or default_name(args.image)
    try:
        if not NAME.fullmatch(name):
            raise StartupError(f"name '{name}' is not a DNS label (a-z, 0-9 and '-', starting with a letter, at most 63)"
                             + ("" if args.name else "; give --name"))
        write(args.output, manifests(args.image, args.model_uri, name))
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write to '{args.output}': {e.strerror}", file=sys.stderr)
        return 2
    out = Path(args.output)
    print(f"kubernetes: on KServe: kubectl apply -f {out / 'kserve'}; without: kubectl apply -f {out / 'kubernetes'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
