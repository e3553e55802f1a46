"""infra/kuberay/: every manifest against KubeRay's own CRD schemas, plus the rules they cannot say.

- Schema: each ray.io document validates against the openAPIV3Schema of its CRD, vendored from
  KubeRay v1.6.0 (tests/infra/kuberay-crds/, hashes in its README), the oldest operator the
  manifests support. Unknown fields are errors here, as `kubectl apply`'s strict field validation
  makes them (the API server itself would drop them silently); no field the API server checks
  with CEL rules (which this test cannot run) is used.
- Auth: token auth only through `rayClusterSpec.authOptions` (mode token, a named Secret); no
  RAY_AUTH_* variables anywhere, which only older operators needed and which leave the operator's
  own job status polls and the autoscaler without the token.
- Secrets: only through `env[].valueFrom.secretKeyRef`; no `envFrom`, no literal values under
  secret-looking names, nothing secret in runtimeEnvYAML.
- Resources: each Ray pod names its EC2 instance type (nodeSelector) and fits it, with room left
  for the kubelet and DaemonSets (tests/infra/instance_types.yaml); /dev/shm holds Ray's object
  store; the image is named once.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import operator
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "infra" / "kuberay").glob("*.yaml"))
CRDS = Path(__file__).resolve().parent / "infra" / "kuberay-crds"
INSTANCE_TYPES = Path(__file__).resolve().parent / "infra" / "instance_types.yaml"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)
AUTH_ENV = re.compile(r"^RAY_AUTH_|^RAY_ENABLE_K8S_TOKEN_AUTH$")
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
# What KubeRay adds to the head pod when enableInTreeAutoscaling is on and
# autoscalerOptions.resources is not set (v1.6.0, BuildAutoscalerContainer).
AUTOSCALER_SIDECAR = {"cpu": Decimal("0.5"), "memory": Decimal(512 * 2**20)}
OBJECT_STORE_SHARE = Decimal("0.3")  # Ray's DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are megabytes of YAML


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.load_all(path.read_text(), Loader=Loader) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), path
    return docs


def ray_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in MANIFESTS:
        for i, doc in enumerate(documents(path)):
            if str(doc.get("apiVersion", "")).startswith("ray.io/"):
                yield f"{path.name}#{i}", doc


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, version) -> openAPIV3Schema, for every served version of the vendored CRDs."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        (crd,) = documents(path)
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "ray.io"
        for v in crd["spec"]["versions"]:
            if v["served"]:
                out[(crd["spec"]["names"]["kind"], v["name"])] = v["schema"]["openAPIV3Schema"]
    return out


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as a JSON Schema that rejects unknown fields, as strict field validation does
    (an object with listed properties and no additionalProperties or preserve-unknown-fields)."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    if out.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def schema_errors(doc: Any, schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(strict(schema))
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def cel_guarded(doc: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in doc whose schema carries x-kubernetes-validations (CEL rules, not checked here)."""
    found = [path or "<root>"] if "x-kubernetes-validations" in schema else []
    if isinstance(doc, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in doc.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                found += cel_guarded(v, sub, f"{path}.{k}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(doc):
            found += cel_guarded(v, schema["items"], f"{path}[{i}]")
    return found


def check_against_crd(doc: dict[str, Any]) -> list[str]:
    kind, version = doc["kind"], doc["apiVersion"].split("/", 1)[1]
    schema = crd_schemas().get((kind, version))
    assert schema is not None, f"no vendored CRD serves {kind} {doc['apiVersion']}"
    return schema_errors(doc, schema)


# --- the cluster spec's parts ----------------------------------------------------------------


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return spec["rayClusterSpec"] if doc["kind"] in ("RayJob", "RayService") else spec


def ray_pod_templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """group name ('head' for the head group) -> pod template, for the Ray node groups."""
    cluster = cluster_spec(doc)
    pods = {"head": cluster["headGroupSpec"]["template"]}
    pods.update({g["groupName"]: g["template"] for g in cluster.get("workerGroupSpecs", [])})
    return pods


def all_pod_templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pods = ray_pod_templates(doc)
    if "submitterPodTemplate" in doc["spec"]:
        pods["submitter"] = doc["spec"]["submitterPodTemplate"]
    return pods


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": Decimal("0.001"), "": 1,
}  # fmt: skip


def quantity(value: str | int) -> Decimal:
    """A Kubernetes resource quantity ("500m", "26Gi", 4) as a number (cores or bytes)."""
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m|)", str(value))
    assert m, f"not a quantity this test reads: {value!r}"
    return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2)])


def allocatable(itype: dict[str, Any]) -> dict[str, Decimal]:
    """What pods may request on one node of the type, after the kubelet's reservations and the
    headroom for DaemonSets (formulas in tests/infra/instance_types.yaml)."""
    cores = int(itype["vcpus"])
    reserved_millicores = (
        Decimal(60)
        + Decimal(10) * min(max(cores - 1, 0), 1)
        + Decimal(5) * min(max(cores - 2, 0), 2)
        + Decimal("2.5") * max(cores - 4, 0)
    )
    mib = Decimal(2**20)
    kube_reserved_memory = (255 + 11 * int(itype["eks_max_pods"])) * mib
    node_memory = Decimal(itype["memory_gib"]) * 2**30 * Decimal("0.96")
    return {
        "cpu": cores - reserved_millicores / 1000 - 1,
        "memory": node_memory - kube_reserved_memory - 100 * mib - 2 * 2**30,
        "nvidia.com/gpu": Decimal(itype["gpus"]),
    }


def pod_requests(pod: dict[str, Any]) -> dict[str, Decimal]:
    """The pod's effective requests: its containers summed (init containers run before them)."""
    total: dict[str, Decimal] = {}
    for c in pod["spec"]["containers"]:
        for name, value in c.get("resources", {}).get("requests", {}).items():
            total[name] = total.get(name, Decimal(0)) + quantity(value)
    return total


def instance_types() -> dict[str, dict[str, Any]]:
    types = yaml.safe_load(INSTANCE_TYPES.read_text())
    assert isinstance(types, dict) and types
    return types


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.unit
def test_vendored_crds_are_as_fetched() -> None:
    """Byte for byte the files the README names (not trimmed, not edited), and only those."""
    readme = (CRDS / "README.md").read_text()
    files = sorted(CRDS.glob("*.yaml"))
    assert [f.name for f in files] == ["ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"]
    for f in files:
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        assert re.search(rf"`{re.escape(f.name)}`.*\| {digest} \|", readme), f.name
    assert "v1.6.0" in readme
    assert set(crd_schemas()) >= {("RayJob", "v1"), ("RayCluster", "v1")}


@pytest.mark.unit
def test_every_manifest_matches_the_kuberay_crd_schema() -> None:
    docs = list(ray_documents())
    assert {name for name, _ in docs} >= {"rayjob.yaml#0"}
    for name, doc in docs:
        assert check_against_crd(doc) == [], name
        schema = crd_schemas()[(doc["kind"], doc["apiVersion"].split("/", 1)[1])]
        assert cel_guarded(doc, schema) == [], f"{name}: fields with CEL rules, unchecked here"
        if doc["kind"] in ("RayJob", "RayService"):  # the embedded cluster spec is a RayCluster's
            raycluster_spec = crd_schemas()[("RayCluster", "v1")]["properties"]["spec"]
            assert schema_errors(cluster_spec(doc), raycluster_spec) == [], name


@pytest.mark.unit
def test_the_schema_check_catches_mistakes() -> None:
    job = documents(ROOT / "infra" / "kuberay" / "rayjob.yaml")[0]
    cluster = ("spec", "rayClusterSpec")
    head_pod = (*cluster, "headGroupSpec", "template", "spec")
    gpu_group = (*cluster, "workerGroupSpecs", 0)
    cases: dict[str, tuple[tuple[str | int, ...], str, Any]] = {  # where, key, value (None: drop)
        "unknown field": (cluster, "authOption", {"mode": "token"}),
        "typo in a pod spec": (head_pod, "nodeSelecter", {}),
        "bad enum": ((*cluster, "authOptions"), "mode", "tokens"),
        "bad quantity": (
            (*gpu_group, "template", "spec", "containers", 0, "resources", "limits"),
            "memory",
            "lots",
        ),
        "wrong type": (gpu_group, "replicas", "two"),
        "missing required": ((*cluster, "headGroupSpec"), "template", None),
    }
    for what, (where, key, value) in cases.items():
        bad = copy.deepcopy(job)
        node = functools.reduce(operator.getitem, where, bad)
        if value is None:
            del node[key]
        else:
            node[key] = value
        assert check_against_crd(bad) != [], what


@pytest.mark.unit
def test_token_auth_only_through_auth_options() -> None:
    for name, doc in ray_documents():
        cluster = cluster_spec(doc)
        auth = cluster.get("authOptions", {})
        assert auth.get("mode") == "token", f"{name}: token auth is off"
        assert auth.get("secretName"), f"{name}: the token's Secret is not named"
        assert not auth.get("enableK8sTokenAuth"), f"{name}: unsupported for RayJob"
        for group, pod in all_pod_templates(doc).items():
            for c in all_containers(pod):
                names = [e["name"] for e in c.get("env", [])]
                assert not [n for n in names if AUTH_ENV.search(n)], f"{name}: {group}/{c['name']}"
        for params in [cluster["headGroupSpec"]["rayStartParams"]] + [
            g["rayStartParams"] for g in cluster.get("workerGroupSpecs", [])
        ]:
            assert not any("auth" in k.lower() for k in params), name
        env_vars = yaml.safe_load(doc["spec"].get("runtimeEnvYAML") or "{}").get("env_vars", {})
        assert not [k for k in env_vars if AUTH_ENV.search(k)], name
        options_env = cluster.get("autoscalerOptions", {}).get("env", [])
        assert not [e for e in options_env if AUTH_ENV.search(e["name"])], name


@pytest.mark.unit
def test_secrets_only_through_secret_key_refs() -> None:
    for name, doc in ray_documents():
        for group, pod in all_pod_templates(doc).items():
            for c in all_containers(pod):
                where = f"{name}: {group}/{c['name']}"
                assert "envFrom" not in c, f"{where}: envFrom; name each secret with secretKeyRef"
                for e in c.get("env", []):
                    if SECRET_NAME.search(e["name"]):
                        assert "value" not in e, f"{where}: {e['name']} written in the manifest"
                        assert set(e.get("valueFrom", {})) == {"secretKeyRef"}, where
                        ref = e["valueFrom"]["secretKeyRef"]
                        assert ref.get("name") and ref.get("key"), where
        runtime_env = yaml.safe_load(doc["spec"].get("runtimeEnvYAML") or "{}")
        assert not [k for k in runtime_env.get("env_vars", {}) if SECRET_NAME.search(k)], name


@pytest.mark.unit
def test_pods_fit_their_instance_types() -> None:
    types = instance_types()
    for name, doc in ray_documents():
        autoscaling = cluster_spec(doc).get("enableInTreeAutoscaling", False)
        sidecar_resources = cluster_spec(doc).get("autoscalerOptions", {}).get("resources")
        for group, pod in ray_pod_templates(doc).items():
            where = f"{name}: {group}"
            itype = pod["spec"].get("nodeSelector", {}).get(INSTANCE_TYPE_LABEL)
            assert itype in types, f"{where}: nodeSelector {INSTANCE_TYPE_LABEL} not in {types}"
            ray_container = pod["spec"]["containers"][0]
            res = ray_container["resources"]
            for key in ("cpu", "memory"):  # Guaranteed QoS; Ray reads its CPUs from the limit
                assert quantity(res["requests"][key]) == quantity(res["limits"][key]), where
            requests = pod_requests(pod)
            if group == "head" and autoscaling:  # the operator adds the autoscaler sidecar
                extra = (
                    {k: quantity(v) for k, v in sidecar_resources.get("requests", {}).items()}
                    if sidecar_resources
                    else AUTOSCALER_SIDECAR
                )
                for k, v in extra.items():
                    requests[k] = requests.get(k, Decimal(0)) + v
            budget = allocatable(types[itype])
            for key, asked in requests.items():
                assert key in budget, f"{where}: {key} is not on {itype}"
                assert asked <= budget[key], (
                    f"{where}: requests {key}={asked} but a {itype} node has {budget[key]} "
                    "for pods after the kubelet's reserve and DaemonSet headroom"
                )
            gpus = quantity(res["limits"].get("nvidia.com/gpu", 0))
            assert gpus == quantity(res["requests"].get("nvidia.com/gpu", 0)), where
            assert (gpus > 0) == (types[itype]["gpus"] > 0), f"{where}: GPU node without GPUs"


@pytest.mark.unit
def test_dev_shm_holds_the_object_store() -> None:
    """Every Ray container mounts a memory-backed /dev/shm at least as large as Ray's default object
    store (30 % of the container's memory); else the object store falls back to /tmp."""
    for name, doc in ray_documents():
        for group, pod in ray_pod_templates(doc).items():
            volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
            ray_container = pod["spec"]["containers"][0]
            (mount,) = [
                m for m in ray_container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"
            ]
            empty_dir = volumes[mount["name"]]["emptyDir"]
            assert empty_dir["medium"] == "Memory", f"{name}: {group}"
            memory = quantity(ray_container["resources"]["limits"]["memory"])
            size = quantity(empty_dir["sizeLimit"])
            assert OBJECT_STORE_SHARE * memory <= size < memory, f"{name}: {group}"


@pytest.mark.unit
def test_image_is_named_once() -> None:
    for path in MANIFESTS:
        text = "\n".join(
            ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")
        )
        for i, doc in enumerate(documents(path)):
            if not str(doc.get("apiVersion", "")).startswith("ray.io/"):
                continue
            images = {
                c["image"] for pod in all_pod_templates(doc).values() for c in all_containers(pod)
            }
            assert len(images) == 1, f"{path.name}#{i}: {images}"
            (image,) = images
            assert re.fullmatch(r"[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+:[\w][\w.-]{0,127}", image)
            assert text.count(image) == 1, (
                f"{path.name}: write the image once, refer to it (*image)"
            )


@pytest.mark.unit
def test_docs_state_the_minimum_kuberay_version() -> None:
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert "KubeRay >= 1.6.0" in docs or "KubeRay ≥ 1.6.0" in docs
    assert "every KubeRay version" not in docs
    assert "operator and CRDs >= v1.6.0" in (ROOT / "infra" / "kuberay" / "rayjob.yaml").read_text()
