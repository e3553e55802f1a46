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
- Placeholders: the manifests carry ${AVTIME_IMAGE}, ${AVTIME_BUCKET} and ${AWS_REGION} and no
  literal bucket or region; every placeholder is one that docs/cluster.md's `envsubst` commands
  fill. The tests read each manifest as kubectl gets it: filled in the same way.
- MLflow (mlflow.yaml, core kinds without a vendored schema): structural checks: kinds and
  apiVersions, selectors that match the pod labels, one replica on the sqlite volume,
  --allowed-hosts with every DNS name of the Service, secrets only via secretKeyRef, requests that
  fit a node, and the RayJob's MLFLOW_TRACKING_URI naming that Service and port.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import operator
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from mlflow.server.security_utils import is_allowed_host_header

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
DOCS = ROOT / "docs" / "cluster.md"
# Values the tests fill the placeholders with (as a user's exports would).
SAMPLE = {
    "AVTIME_IMAGE": "registry.example.com/avtime:0123456789ab",
    "AVTIME_BUCKET": "my-test-bucket",
    "AWS_REGION": "eu-west-2",
}
REFERENCE = re.compile(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")  # what envsubst replaces
LITERAL_REGION = re.compile(r"\b(?:us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-\d\b")
ENVSUBST = re.compile(r"envsubst '([^']*)' < (infra/kuberay/[\w.-]+)")


def envsubst_commands() -> list[tuple[str, frozenset[str]]]:
    """(manifest path, variable names) of each `envsubst 'NAMES' < infra/kuberay/X` in the docs."""
    found = []
    for names, path in ENVSUBST.findall(DOCS.read_text()):
        found.append((path, frozenset(m[0] or m[1] for m in REFERENCE.findall(names))))
    return found


def envsubst(text: str, names: frozenset[str], values: dict[str, str]) -> str:
    """GNU envsubst with a SHELL-FORMAT: only the listed names, as $NAME or ${NAME}; unset -> ''."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, "") if name in names else m.group(0)

    return REFERENCE.sub(sub, text)


def rendered(path: Path) -> str:
    """The manifest as the docs' command hands it to kubectl, filled with SAMPLE."""
    rel = str(path.relative_to(ROOT))
    commands = {names for p, names in envsubst_commands() if p == rel}
    assert len(commands) == 1, f"the docs fill {rel} in {len(commands)} different ways"
    return envsubst(path.read_text(), commands.pop(), SAMPLE)


def documents(path: Path) -> list[dict[str, Any]]:
    text = rendered(path) if path.parent == ROOT / "infra" / "kuberay" else path.read_text()
    docs = [d for d in yaml.load_all(text, Loader=Loader) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), path
    return docs


def code_lines(text: str) -> str:
    """The text without its comment lines."""
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


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
        text = code_lines(rendered(path))
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


# --- placeholders -----------------------------------------------------------------------------


@pytest.mark.unit
def test_docs_fill_every_placeholder() -> None:
    """Every ${NAME} in a manifest is one that each of the docs' envsubst commands for that file
    fills, each such name is exported in the docs, and no literal bucket, region or image is left
    for a user to edit by hand."""
    docs = DOCS.read_text()
    commands = envsubst_commands()
    assert {p for p, _ in commands} == {str(m.relative_to(ROOT)) for m in MANIFESTS}
    for path in MANIFESTS:
        code = code_lines(path.read_text())
        used = {m[0] or m[1] for m in REFERENCE.findall(code)}
        assert used == set(SAMPLE), f"{path.name}: placeholders {used}"
        for rel, names in commands:
            if rel == str(path.relative_to(ROOT)):
                assert used <= names, f"{rel}: the docs' envsubst leaves {used - names} empty"
        assert "avtime-data" not in code and "GIT_SHA" not in code, path.name
        assert not LITERAL_REGION.search(code), f"{path.name}: {LITERAL_REGION.search(code)}"
        out = code_lines(rendered(path))
        assert "$" not in out, f"{path.name}: unfilled: {out[out.index('$') :][:40]}"
        assert SAMPLE["AVTIME_BUCKET"] in out and SAMPLE["AVTIME_IMAGE"] in out, path.name
    for name in set().union(*(names for _, names in commands)):
        assert re.search(rf"^export .*\b{name}=", docs, re.M), f"the docs never export {name}"


@pytest.mark.unit
def test_envsubst_emulation_is_envsubst(tmp_path: Path) -> None:
    """The tests' envsubst() gives what GNU envsubst gives for the docs' commands."""
    exe = shutil.which("envsubst")
    if exe is None:
        pytest.skip("GNU envsubst (gettext-base) is not installed")
    for rel, names in envsubst_commands():
        shell_format = " ".join(f"${n}" for n in sorted(names))
        out = subprocess.run([exe, shell_format], input=(ROOT / rel).read_text(), text=True,
                             capture_output=True, check=True, timeout=30,
                             env={"PATH": os.environ.get("PATH", ""), **SAMPLE})  # fmt: skip
        assert out.stdout == envsubst((ROOT / rel).read_text(), names, SAMPLE), rel
    text = "a $AVTIME_BUCKET ${AWS_REGION} $(POD_IP) $OTHER ${OTHER}"
    assert envsubst(text, frozenset({"AVTIME_BUCKET", "AWS_REGION"}), SAMPLE) == (
        "a my-test-bucket eu-west-2 $(POD_IP) $OTHER ${OTHER}"
    )


# --- the MLflow server (core kinds: structural checks) ----------------------------------------

MLFLOW_MANIFEST = ROOT / "infra" / "kuberay" / "mlflow.yaml"
MLFLOW_KINDS = {
    "Namespace": "v1",
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "Service": "v1",
}


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {d["kind"]: d for d in docs}
    assert len(out) == len(docs), "one document per kind"
    return out


def cli_options(argv: list[str]) -> dict[str, str]:
    """--name=value / --name value / --flag -> {name: value or ''}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        assert arg.startswith("--"), f"not an option: {arg}"
        if "=" in arg:
            key, value = arg.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = arg, argv[i + 1]
            i += 1
        else:
            key, value = arg, ""
        out[key] = value
        i += 1
    return out


def service_hosts(service: dict[str, Any]) -> list[str]:
    """Every DNS name a pod can reach the Service by, with and without its port."""
    name, ns = service["metadata"]["name"], service["metadata"]["namespace"]
    (port,) = [p["port"] for p in service["spec"]["ports"]]
    names = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
    return names + [f"{n}:{port}" for n in names]


def mlflow_problems(docs: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the MLflow manifest's documents (empty: nothing)."""
    problems = []
    kinds = by_kind(docs)
    if {k: d["apiVersion"] for k, d in kinds.items()} != MLFLOW_KINDS:
        return [f"kinds/apiVersions: {[(d['kind'], d['apiVersion']) for d in docs]}"]
    ns = kinds["Namespace"]["metadata"]["name"]
    for kind in ("PersistentVolumeClaim", "Deployment", "Service"):
        if kinds[kind]["metadata"].get("namespace") != ns:
            problems.append(f"{kind} is not in namespace {ns}")
    deploy, service = kinds["Deployment"], kinds["Service"]
    pod = deploy["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    for what, selector in (
        ("Deployment selector", deploy["spec"]["selector"]["matchLabels"]),
        ("Service selector", service["spec"]["selector"]),
    ):
        if not selector or selector.items() - labels.items():
            problems.append(f"{what} {selector} does not match the pod labels {labels}")
    # sqlite on a ReadWriteOnce volume: one pod, one process, never two at once.
    if deploy["spec"].get("replicas") != 1 or deploy["spec"].get("strategy") != {
        "type": "Recreate"
    }:
        problems.append("sqlite needs replicas 1 and strategy Recreate")
    return problems + server_problems(kinds)


def server_problems(kinds: dict[str, dict[str, Any]]) -> list[str]:
    """The mlflow container: its database on the volume, artifacts proxied to S3, the port the
    Service targets, --allowed-hosts with every name of the Service, probes, secrets."""
    problems = []
    service, pvc = kinds["Service"], kinds["PersistentVolumeClaim"]
    pod = kinds["Deployment"]["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    opts = cli_options(c.get("args", []))
    if c.get("command") != ["mlflow", "server"]:
        problems.append(f"command {c.get('command')}")
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["spec"].get("volumes", []) if "persistentVolumeClaim" in v}  # fmt: skip
    mounts = {m["mountPath"]: claims.get(m["name"]) for m in c.get("volumeMounts", [])}
    db = opts.get("--backend-store-uri", "")
    if not (
        db.startswith("sqlite:////")
        and mounts.get(str(Path(db[10:]).parent)) == pvc["metadata"]["name"]
    ):
        problems.append(f"--backend-store-uri {db!r} is not on the PVC {pvc['metadata']['name']}")
    if opts.get("--workers") != "1":
        problems.append("sqlite needs --workers=1")
    if "--serve-artifacts" not in opts or not opts.get("--artifacts-destination", "").startswith(
        "s3://"
    ):
        problems.append("artifacts: --serve-artifacts with an s3:// --artifacts-destination")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    (svc_port,) = service["spec"]["ports"]
    if (
        ports.get(svc_port["targetPort"]) != int(opts.get("--port", "0"))
        or opts.get("--host") != "0.0.0.0"
    ):
        problems.append(
            f"Service targetPort {svc_port['targetPort']} is not what mlflow listens on"
        )
    allowed = opts.get("--allowed-hosts", "").split(",")
    for host in service_hosts(service):
        if host not in allowed:
            problems.append(f"--allowed-hosts lacks {host}")
    if "*" in allowed:
        problems.append("--allowed-hosts=* turns the check off")
    for probe in ("readinessProbe", "livenessProbe"):  # exempt from the Host check
        if c.get(probe, {}).get("httpGet", {}).get("path") != "/health":
            problems.append(f"{probe} is not an HTTP probe of /health")
    problems += secret_problems(c, " ".join(c.get("args", [])))
    return problems


def secret_problems(container: dict[str, Any], args: str) -> list[str]:
    out = []
    if "envFrom" in container:
        out.append("envFrom; name each secret with secretKeyRef")
    for e in container.get("env", []):
        if SECRET_NAME.search(e["name"]) and set(e.get("valueFrom", {})) != {"secretKeyRef"}:
            out.append(f"{e['name']} is not from a secretKeyRef")
    if re.search(r"://[^/\s@]+:[^/\s@]+@", args):
        out.append("a password in a URI of the arguments")
    return out


@pytest.mark.unit
def test_mlflow_manifest() -> None:
    assert mlflow_problems(documents(MLFLOW_MANIFEST)) == []


@pytest.mark.unit
def test_the_mlflow_checks_catch_mistakes() -> None:
    good = documents(MLFLOW_MANIFEST)
    kinds = [d["kind"] for d in good]
    deploy_at, service_at = kinds.index("Deployment"), kinds.index("Service")

    def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(docs[deploy_at]["spec"]["template"]["spec"]["containers"][0])

    def args_without(prefix: str) -> Any:
        return lambda c: c.update(args=[a for a in c["args"] if not a.startswith(prefix)])

    def allowed_without(host: str) -> Any:
        def edit(c: dict[str, Any]) -> None:
            c["args"] = [re.sub(rf"(?<=[=,]){re.escape(host)}(?=,|$)", "x", a) for a in c["args"]]

        return edit

    def secret_literal(c: dict[str, Any]) -> None:
        c["env"] = [*c["env"], {"name": "AWS_SECRET_ACCESS_KEY", "value": "plain"}]

    def db_password(c: dict[str, Any]) -> None:
        c["args"] = [*c["args"], "--registry-store-uri=postgresql://u:pw@db/mlflow"]

    container_edits = {
        "the full service name": allowed_without("mlflow.mlflow.svc.cluster.local:5000"),
        "the short name": allowed_without("mlflow"),
        "no --allowed-hosts": args_without("--allowed-hosts"),
        "no --serve-artifacts": args_without("--serve-artifacts"),
        "a literal secret": secret_literal,
        "a password in a URI": db_password,
        "envFrom": lambda c: c.update(envFrom=[{"secretRef": {"name": "avtime-s3"}}]),
        "db off the volume": lambda c: c.update(volumeMounts=[]),
    }
    for what, edit in container_edits.items():
        bad = copy.deepcopy(good)
        c = container(bad)
        edit(c)
        bad[deploy_at]["spec"]["template"]["spec"]["containers"][0] = c
        assert mlflow_problems(bad) != [], what
    doc_edits: dict[str, tuple[int, tuple[str, ...], Any]] = {
        "service selector": (service_at, ("spec", "selector"), {"app": "other"}),
        "two replicas": (deploy_at, ("spec", "replicas"), 2),
        "rolling update": (deploy_at, ("spec", "strategy"), {"type": "RollingUpdate"}),
        "other port": (service_at, ("spec", "ports"), [{"port": 80, "targetPort": "http"}]),
    }
    for what, (at, where, value) in doc_edits.items():
        bad = copy.deepcopy(good)
        functools.reduce(operator.getitem, where[:-1], bad[at])[where[-1]] = value
        assert mlflow_problems(bad) != [], what


@pytest.mark.unit
def test_mlflow_fits_a_node() -> None:
    """Its requests fit the smallest node type infra/ uses (it names none), within its limits."""
    deploy = by_kind(documents(MLFLOW_MANIFEST))["Deployment"]
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert set(requests) == set(limits) == {"cpu", "memory"}
    smallest = min(
        (allocatable(t) for t in instance_types().values()), key=operator.itemgetter("memory")
    )
    for key in ("cpu", "memory"):
        assert quantity(requests[key]) <= quantity(limits[key]) <= smallest[key], key


@pytest.mark.unit
def test_rayjob_tracks_to_the_mlflow_service() -> None:
    """The RayJob's MLFLOW_TRACKING_URI is the Service's full DNS name and port, and the server's
    own Host check (MLflow's matcher) accepts what clients send for it and refuses other names."""
    mlflow_docs = by_kind(documents(MLFLOW_MANIFEST))
    service = mlflow_docs["Service"]
    (c,) = mlflow_docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    allowed = cli_options(c["args"])["--allowed-hosts"].split(",")
    (port,) = [p["port"] for p in service["spec"]["ports"]]
    name, ns = service["metadata"]["name"], service["metadata"]["namespace"]
    for _, doc in ray_documents():
        env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
        uri = urlsplit(env["MLFLOW_TRACKING_URI"])
        assert (uri.scheme, uri.hostname, uri.port) == (
            "http",
            f"{name}.{ns}.svc.cluster.local",
            port,
        )
        assert is_allowed_host_header(allowed, uri.netloc)  # what requests sends as Host
    for host in service_hosts(service) + ["localhost:5000", "127.0.0.1:8080"]:
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com", "mlflow.evil.example.com:5000", "10.0.0.5:5000", ""):
        assert not is_allowed_host_header(allowed, host), host
