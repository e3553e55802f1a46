"""Checkpoint files that do not fit: one message naming the file, never torch's wall of text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avtime.training.engine.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    dir_name,
    find_latest,
    find_resumable,
    load_weights,
    save,
)

pytestmark = pytest.mark.unit


def _net(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 2)
    )


def test_matching_weights_load_and_a_ddp_prefix_is_ignored() -> None:
    src, dst = _net(8), _net(8)
    load_weights(dst, {f"module.{k}": v for k, v in src.state_dict().items()}, "ck/state.pt")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_other_shapes_are_named_with_the_file() -> None:
    with pytest.raises(CheckpointError) as err:
        load_weights(_net(8), _net(16).state_dict(), "s3://b/ck/step_00000006/state.pt")
    text = str(err.value)
    assert text.startswith("s3://b/ck/step_00000006/state.pt does not match the model")
    assert "3 shapes differ (0.weight is [16, 4] there and [8, 4] in the model)" in text
    assert len(text) < 400 and "\n" not in text


def test_missing_and_unexpected_tensors_are_counted() -> None:
    weights = _net(8).state_dict()
    weights.pop("2.bias")
    weights["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 tensors missing \(e.g. 2.bias\); 1 unexpected"):
        load_weights(_net(8), weights, "ck/state.pt")


def _save(root: Path, step: int) -> Path:
    meta = CheckpointMeta(step=step, data_epoch=0, examples_seen=step * 4, mlflow_run_id="r")
    return save(root / dir_name(step), meta, {"model": _net(8).state_dict()}, "preset: smoke\n")


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    _save(tmp_path, 5)
    newest = _save(tmp_path, 10)
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a full disk, say
    said: list[str] = []
    found = find_resumable(fs, str(tmp_path), said.append)
    assert found is not None and found[0] == f"{tmp_path}/{dir_name(5)}" and found[1].step == 5
    assert said[0].startswith(f"checkpoint {newest} is unreadable (")
    assert (
        said[1]
        == f"resuming from {tmp_path}/{dir_name(5)} (step 5), the newest readable checkpoint"
    )
    assert find_latest(fs, str(tmp_path))[0] == str(newest)  # files present: still the newest  # type: ignore[index]


def test_no_readable_checkpoint_is_one_error_and_none_is_none(tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    assert find_resumable(fs, str(tmp_path / "empty"), print) is None
    (_save(tmp_path, 3) / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"none of the 1 checkpoints in .* is readable"):
        find_resumable(fs, str(tmp_path), lambda _: None)
