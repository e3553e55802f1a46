"""infra/: every manifest parses, has its required fields, and runs real avtime command lines.

- KubeRay RayJob: apiVersion/kind, entrypoint parsed by avtime's own parser, head + gpu + cpu-data
  groups with resource requests and limits, token auth and credentials from Secrets only.
- AWS cluster launcher YAML: passes Ray's own schema check, the same three node types.
- Dockerfile: the Ray version everywhere matches the installed Ray; the project is installed.
- Every `avtime ...` command in docs/cluster.md and infra/README.md parses.
- local_stack.sh: valid bash, and a usage message.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from avtime.training.cluster.submit import check_avtime_args

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.I)


def ray_version() -> str:
    import ray

    return str(ray.__version__)


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def assert_avtime_command(line: str) -> None:
    argv = shlex.split(line)
    assert argv[0] == "avtime", line
    check_avtime_args(argv[1:])  # raises SubmitError naming the problem


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_template["spec"]["containers"])


@pytest.mark.unit
def test_rayjob_manifest() -> None:
    job = load(INFRA / "kuberay" / "rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert_avtime_command(spec["entrypoint"])
    assert spec["entrypoint"].startswith("avtime train --config paper --data s3://")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert not any(SECRET_NAME.search(k) for k in runtime_env.get("env_vars", {}))
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray_version()
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu-data"}
    pods = [head["template"]] + [g["template"] for g in groups.values()]
    for pod in pods:
        for c in containers(pod):
            res = c["resources"]
            assert res["requests"] and res["limits"], c["name"]
            assert res["requests"]["cpu"] == res["limits"]["cpu"]
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_worker_niceness"]["value"] == "0"  # Train workers not at 15
            for name, e in env.items():  # secrets only by reference
                if SECRET_NAME.search(name):
                    assert "secretKeyRef" in e["valueFrom"] and "value" not in e, name
    gpu = containers(groups["gpu"]["template"])[0]["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) >= 1
    assert (
        "nvidia.com/gpu" not in containers(groups["cpu-data"]["template"])[0]["resources"]["limits"]
    )
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    submitter = containers(spec["submitterPodTemplate"])[0]
    assert {e["name"] for e in submitter["env"]} >= {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}


@pytest.mark.unit
def test_rayjob_fields_are_known_to_kuberay() -> None:
    """Catch typos: only field names of the ray.io/v1 RayJob / RayCluster types."""
    job = load(INFRA / "kuberay" / "rayjob.yaml")
    rayjob_spec = {
        "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
        "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
        "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
        "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
        "shutdownAfterJobFinishes", "suspend",
    }  # fmt: skip
    cluster_spec = {
        "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
        "autoscalerOptions", "headServiceAnnotations", "suspend", "authOptions",
    }  # fmt: skip
    group = {
        "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
        "template", "scaleStrategy", "suspend", "idleTimeoutSeconds",
    }  # fmt: skip
    head = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
    spec = job["spec"]
    assert set(spec) <= rayjob_spec
    assert set(spec["rayClusterSpec"]) <= cluster_spec
    assert set(spec["rayClusterSpec"]["headGroupSpec"]) <= head
    for g in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert set(g) <= group
        assert {"groupName", "rayStartParams", "template"} <= set(g)
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode")


@pytest.mark.unit
def test_aws_cluster_launcher_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load(INFRA / "aws" / "cluster.yaml")
    validate_config(prepare_config(copy.deepcopy(cfg)))  # Ray's own JSON schema
    assert cfg["provider"]["type"] == "aws"
    nodes = cfg["available_node_types"]
    assert set(nodes) == {"ray.head.default", "gpu_worker", "cpu_worker"}
    assert cfg["head_node_type"] == "ray.head.default"
    assert nodes["ray.head.default"]["resources"] == {"CPU": 0}
    for name, node in nodes.items():
        assert "resources" in node and node["node_config"]["InstanceType"], name
    assert nodes["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert cfg["docker"]["image"].endswith(f":{ray_version()}")
    starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert starts.count("RAY_worker_niceness=0 ray start") == 2
    assert not SECRET_NAME.search(yaml.safe_dump(cfg.get("docker", {})))
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 0  # a typo is caught
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(bad))


@pytest.mark.unit
def test_dockerfile() -> None:
    text = (INFRA / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and line[0].isupper()]
    keys = [k for k, *_ in instructions]
    assert keys.count("FROM") == 1
    assert f"ARG RAY_VERSION={ray_version()}" in text
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-gpu" in text
    copied = " ".join(rest[0] for k, *rest in instructions if k == "COPY")
    for needed in ("pyproject.toml", "pipelines", "models", "training"):
        assert needed in copied
    assert "pip install --no-cache-dir --no-deps ." in text and "avtime --help" in text
    envs = " ".join(rest[0] for k, *rest in instructions if k in ("ENV", "ARG"))
    assert not SECRET_NAME.search(envs)


@pytest.mark.unit
def test_every_documented_command_parses() -> None:
    """Each `avtime <subcommand> ...` line in the cluster docs is a real command line."""
    found = 0
    for doc in (ROOT / "docs" / "cluster.md", INFRA / "README.md"):
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            text = block.replace("\\\n", " ")
            for line in text.splitlines():
                for m in re.finditer(r"(?:^|\s--\s+|^\s*)(avtime (?!submit)[^#&|]+)", line):
                    cmd = m.group(1).strip()
                    if cmd.split()[1] in ("synth", "preprocess", "train", "eval", "compare"):
                        assert_avtime_command(cmd)
                        found += 1
    assert found >= 6


@pytest.mark.unit
def test_local_stack_script(tmp_path: Path) -> None:
    script = INFRA / "local_stack.sh"
    assert script.stat().st_mode & 0o111, "local_stack.sh must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run([str(script), "nonsense"], capture_output=True, text=True, timeout=30,
                         env={"AVTIME_STACK_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin",
                              "HOME": str(tmp_path)})  # fmt: skip
    assert out.returncode == 2 and "local_stack.sh start" in out.stderr
    assert not (tmp_path / "state").exists()  # usage errors create nothing
    out = subprocess.run([str(script), "status"], capture_output=True, text=True, timeout=30,
                         env={"AVTIME_STACK_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin",
                              "HOME": str(tmp_path)})  # fmt: skip
    assert out.returncode == 3 and "ray: stopped" in out.stdout
