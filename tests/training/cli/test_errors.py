"""Every user mistake and environment fault ends in one line and a non-zero exit, through the
real `avtime` command (a subprocess); the traceback appears only with --debug."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from avtime.training.cli.errors import chain, describe

AVTIME = [sys.executable, "-m", "avtime.training.cli.main"]
Setup = Callable[[Path], list[str]]


def run_cli(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = subprocess.run(
        AVTIME + argv, capture_output=True, text=True, cwd=cwd, timeout=180,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})},
    )  # fmt: skip
    return out.returncode, out.stderr


def _shards(tmp: Path, part: bytes | None) -> Path:
    """A dataset folder whose manifest lists one shard, with `part` as its bytes (None: absent)."""
    ds = tmp / "ds"
    ds.mkdir()
    doc = {"schema_version": 1, "frame_format": "jpeg", "config": {"sample_rate": 16000},
           "counts": {}, "shards": [{"path": "part-00000-000.parquet"}]}  # fmt: skip
    (ds / "manifest.json").write_text(json.dumps(doc))
    if part is not None:
        (ds / "part-00000-000.parquet").write_bytes(part)
    return ds


def _manifest_without_path(tmp: Path) -> Path:
    ds = _shards(tmp, b"x")
    doc = json.loads((ds / "manifest.json").read_text())
    doc["shards"] = [{"rows": 3}]
    (ds / "manifest.json").write_text(json.dumps(doc))
    return ds


def _folder_with_videos(tmp: Path, labels: str) -> list[str]:
    (tmp / "v").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp / "v" / name).write_bytes(b"not a video")
    (tmp / "labels.csv").write_text(labels)
    return ["preprocess", "v", "out", "--labels", "labels.csv"]


def _bad_checkpoint(tmp: Path) -> list[str]:
    ck = tmp / "ck"
    ck.mkdir()
    meta = {"format_version": 1, "step": 1, "data_epoch": 0, "examples_seen": 0,
            "mlflow_run_id": "r"}  # fmt: skip
    (ck / "meta.json").write_text(json.dumps(meta))
    (ck / "state.pt").write_bytes(os.urandom(999))
    (ck / "config.yaml").write_text("preset: demo\n")
    return _bad_checkpoint_args(tmp)


def _mismatched_checkpoint(tmp: Path) -> list[str]:
    """A checkpoint whose config.yaml describes another model than its weights (wider
    embeddings), and a dataset for `eval action`."""
    from dataclasses import replace

    from avtime.pipelines.configlib import dump_yaml
    from avtime.training.config import load_run_config
    from avtime.training.engine import checkpoint as ckpt
    from avtime.training.eval.model_io import build_model

    cfg = load_run_config("smoke")
    wider = replace(cfg, model=replace(cfg.model, embed_dim=2 * cfg.model.embed_dim))
    meta = ckpt.CheckpointMeta(step=1, data_epoch=0, examples_seen=0, mlflow_run_id="r")
    ckpt.save(tmp / "ck", meta, {"model": build_model(cfg).state_dict()}, dump_yaml(wider))
    return _bad_checkpoint_args(tmp)


def _bad_checkpoint_args(tmp: Path) -> list[str]:
    (tmp / "root").mkdir()
    (tmp / "root" / "labels.csv").write_text("path,label,split\na.mp4,x,train\nb.mp4,y,test\n")
    return ["eval", "action", "--checkpoint", "ck", "--dataset", "folder", "--root", "root",
            "--no-mlflow"]  # fmt: skip


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_bytes(data) and None


CASES: dict[str, tuple[Setup, tuple[str, ...]]] = {
    "sample on a missing path": (
        lambda tmp: ["sample", "nowhere", "--n", "1", "--out", "o.npz"],
        ("nowhere", "no manifest.json", "avtime preprocess"),
    ),
    "sample on a corrupt shard": (
        lambda tmp: ["sample", str(_shards(tmp, os.urandom(3000))), "--n", "1", "--out", "o.npz"],
        ("part-00000-000.parquet", "Parquet", "avtime verify"),
    ),
    "train on a listed shard that is missing": (
        lambda tmp: ["train", "--config", "smoke", "--data", str(_shards(tmp, None))],
        ("1 of the 1 shards", "missing", "part-00000-000.parquet"),
    ),
    "train with S3 down": (
        lambda tmp: ["train", "--config", "smoke", "--data", "s3://avtime-data/shards"],
        ("cannot reach S3", "http://127.0.0.1:9", "AWS_ENDPOINT_URL"),
    ),
    "a YAML file that does not parse": (
        lambda tmp: (
            _write("bad.yaml", b"train: [1,\n  steps")(tmp),
            ["train", "--config", "bad.yaml"],
        )[1],  # fmt: skip
        ("bad.yaml", "does not parse", "line"),
    ),
    "an unknown preset in a YAML file": (
        lambda tmp: (
            _write("p.yaml", b"preset: nosuch\n")(tmp),
            ["train", "--config", "p.yaml", "--data", "x"],
        )[1],  # fmt: skip
        ("nosuch", "is not one of", "paper"),
    ),
    "a listing CSV that is not UTF-8": (
        lambda tmp: (
            _write("l.csv", b"path\n\xff\xfeclip.mp4\n")(tmp),
            ["preprocess", "l.csv", "out"],
        )[1],  # fmt: skip
        ("l.csv", "not UTF-8"),
    ),
    "a JSONL line that is not an object": (
        lambda tmp: (_write("l.jsonl", b'"clip.mp4"\n')(tmp), ["preprocess", "l.jsonl", "out"])[1],
        ("l.jsonl", "line 1", "JSON object"),
    ),
    "synth when OUT is a file": (
        lambda tmp: (
            _write("out", b"x")(tmp),
            ["synth", "out", "--videos", "1", "--seconds", "1", "--quiet"],
        )[1],  # fmt: skip
        ("out", "in the way", "folder"),
    ),
    "compare on a file that is not an MLflow database": (
        lambda tmp: (
            _write("x.db", b"not sqlite at all" * 100)(tmp),
            ["compare", "--tracking-uri", f"sqlite:///{tmp / 'x.db'}"],
        )[1],  # fmt: skip
        ("not an MLflow database", "tracking"),
    ),
    "eval on a checkpoint of random bytes": (
        _bad_checkpoint,
        ("state.pt", "not an avtime checkpoint", "weights_only=True"),
    ),
    "--fps nan": (lambda tmp: ["preprocess", "v", "out", "--fps", "nan"], ("--fps", "finite")),
    "--rows-per-shard 0": (
        lambda tmp: ["preprocess", "v", "out", "--rows-per-shard", "0"],
        ("rows_per_shard", ">= 1"),
    ),
    "--set with infinity": (
        lambda tmp: ["train", "--config", "smoke", "--set", "optim.lr=inf"],
        ("optim.lr", "finite"),
    ),
    "labels with the wrong columns": (
        lambda tmp: _folder_with_videos(tmp, "file,class\na.mp4,x\n"),
        ("labels.csv", "expected path,label"),
    ),
    "labels that match no input": (
        lambda tmp: _folder_with_videos(tmp, "path,label\nzzz.mp4,x\n"),
        ("labels.csv", "no row matches", "2 inputs"),
    ),
    "labels that give one path two splits": (
        lambda tmp: _folder_with_videos(tmp, "path,label,split\na.mp4,x,train\na.mp4,x,test\n"),
        ("a.mp4 is listed twice", "split='train'", "split='test'"),
    ),
    "train on a manifest entry without a path": (
        lambda tmp: ["train", "--config", "smoke", "--data", str(_manifest_without_path(tmp))],
        ("manifest.json", "shard entry 0", "has no 'path'"),
    ),
    "eval pretext on a manifest entry without a path": (
        lambda tmp: [
            "eval",
            "pretext",
            "--checkpoint",
            "ck",
            "--data",
            str(_manifest_without_path(tmp)),
        ],  # fmt: skip
        ("manifest.json", "shard entry 0", "has no 'path'"),
    ),
    "eval on a checkpoint whose config does not match its weights": (
        _mismatched_checkpoint,
        ("ck/state.pt does not match the model", "config.yaml", "shapes differ"),
    ),
    "train when the MLflow server does not answer": (
        lambda tmp: ["train", "--config", "smoke", "--data", str(_shards(tmp, None))],
        ("cannot reach the MLflow server at http://127.0.0.1:9", "MLFLOW_TRACKING_URI"),
    ),
}
CASE_ENV = {
    "train when the MLflow server does not answer": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
}
S3_DOWN = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s"}  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_line_and_non_zero_exit(case: str, tmp_path: Path) -> None:
    setup, words = CASES[case]
    argv = setup(tmp_path)
    started = time.monotonic()
    code, err = run_cli(argv, tmp_path, {**S3_DOWN, **CASE_ENV.get(case, {})})
    print(f"{case}: exit {code} after {time.monotonic() - started:.1f} s: {err.strip()[:300]}")
    lines = err.strip().splitlines()
    assert code != 0, err
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"avtime {argv[0]}")
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.integration
def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    code, err = run_cli(["sample", "nowhere", "--n", "1", "--out", "o.npz", "--debug"], tmp_path)
    assert code != 0 and "Traceback" in err and err.strip().splitlines()[-1].startswith("avtime")


@pytest.mark.integration
def test_s3_with_a_wrong_key(tmp_path: Path, s3_env: object) -> None:
    bucket = s3_env.bucket("wrong-key")  # type: ignore[attr-defined]
    env = {"AWS_SECRET_ACCESS_KEY": "definitely-not-the-secret"}
    code, err = run_cli(["train", "--config", "smoke", "--data", f"{bucket}/shards"], tmp_path, env)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1, err[-3000:]
    assert "definitely-not-the-secret" not in err
    assert any(w in lines[0] for w in ("credentials", "refused", "denied", "Forbidden")), lines[0]


@pytest.mark.integration
def test_ctrl_c_during_preprocess_is_one_line_and_resumable(tmp_path: Path) -> None:
    """SIGINT to the process group (a terminal's Ctrl-C) once the ingest tasks write: exit 130,
    one line of ours, no traceback, the lock released; the same command then finishes the job."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    synth = ["synth", "c", "--videos", "16", "--seconds", "10", "--quiet"]
    assert subprocess.run(AVTIME + synth, cwd=tmp_path, env=env, timeout=300).returncode == 0
    proc = subprocess.Popen(
        AVTIME + ["preprocess", "c", "out", "--workers", "1"], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    scratch = tmp_path / "out" / "_tmp"  # each ingest task's shard writer works in here
    deadline = time.monotonic() + 120
    while not (scratch.is_dir() and any(scratch.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "the ingest tasks never ran"
        time.sleep(0.2)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    print(f"Ctrl-C to preprocess's process group: exit {proc.returncode} after "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    ours = [line for line in err.splitlines() if line.startswith("avtime")]
    assert proc.returncode == 130, err[-3000:]
    assert ours == ["avtime preprocess: interrupted"] and "Traceback" not in err, err[-3000:]
    assert not (tmp_path / "out" / "_progress" / "lock.json").exists()
    again = subprocess.run(AVTIME + ["preprocess", "c", "out", "--workers", "1"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0 and "16 inputs -> " in again.stdout, again.stderr[-2000:]


class _RayLikeError(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__("UDF failed to process a data block.")
        self.cause = cause


@pytest.mark.unit
def test_describe_unwraps_ray_and_names_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://user:pw@s3.local:8333")
    outage = _RayLikeError(EndpointConnectionError(endpoint_url="http://x"))
    assert [type(e).__name__ for e in chain(outage)] == ["_RayLikeError", "EndpointConnectionError"]
    line = describe(outage)
    assert line.startswith("cannot reach S3 at http://***@s3.local:8333") and "pw" not in line
    denied = ClientError({"Error": {"Code": "InvalidAccessKeyId"}}, "ListObjectsV2")
    assert "refused the credentials" in describe(_RayLikeError(denied))
    assert describe(RuntimeError("boom\nsecond line")).startswith("RuntimeError: boom second")
    assert "\n" not in describe(ValueError("a\nb"))


@pytest.mark.unit
def test_describe_reads_a_ray_task_error_s_remote_traceback() -> None:
    """A Ray task's error crosses the process boundary as text: the S3 fault is in the message."""
    remote = RuntimeError(
        "ray::MapBatches(map_groups)() (pid=1)\nbotocore.exceptions.EndpointConnectionError: "
        'Could not connect to the endpoint URL: "http://127.0.0.1:9"\n\nUDF failed'
    )
    assert describe(_RayLikeError(remote)).startswith("cannot reach S3 at")
