"""Training checkpoints: one folder per save, tensors in `state.pt`, facts in `meta.json`.

A checkpoint folder holds:
- `state.pt`: `{"model", "optimizer", "scheduler", "queue"}` state dicts, written with
  `torch.save` and read back with `torch.load(..., weights_only=True)` (no pickled code).
- `meta.json`: step, data epoch, examples seen and the MLflow run id.
- `config.yaml`: the resolved run config, so `avtime eval pretext` can rebuild the model.

Ray Train uploads the folder to the run's storage (local or s3://) as `step_<8 digits>`; this
module also finds the latest complete one there, for the driver (the MLflow run id to continue)
and for the data stream (the data epoch to start from).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from avtime.pipelines.errors import UsageError

STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
DIR_PREFIX = "step_"
FORMAT_VERSION = 1
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of committed checkpoints


class CheckpointError(UsageError):
    """A checkpoint file that cannot be read as one; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class CheckpointMeta:
    """The non-tensor facts of a checkpoint."""

    step: int  # optimiser steps done
    data_epoch: int  # the data epoch the next example comes from
    examples_seen: int  # global training examples consumed
    mlflow_run_id: str
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        raw = json.loads(text)
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"checkpoint format_version {raw.get('format_version')!r} is not {FORMAT_VERSION}"
            )
        return cls(**{k: raw[k] for k in ("step", "data_epoch", "examples_seen", "mlflow_run_id")})


def dir_name(step: int) -> str:
    """Folder name of the checkpoint taken after `step` optimiser steps."""
    return f"{DIR_PREFIX}{step:08d}"


def save(folder: str | Path, meta: CheckpointMeta, state: dict[str, Any], config_yaml: str) -> Path:
    """Write a checkpoint into `folder` (created); `state` maps names to state dicts."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / STATE_FILE)
    (path / CONFIG_FILE).write_text(config_yaml)
    (path / META_FILE).write_text(json.dumps(asdict(meta), indent=1) + "\n")
    return path


def load(
    folder: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[CheckpointMeta, Any]:
    """(meta, state dicts) of a local checkpoint folder; tensors only (`weights_only=True`)."""
    path = Path(folder)
    if not (path / META_FILE).is_file() or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not an avtime checkpoint (needs {META_FILE} and {STATE_FILE})"
        )
    try:
        meta = CheckpointMeta.from_json((path / META_FILE).read_text())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path / META_FILE} is not an avtime checkpoint's meta ({exc})"
        ) from None
    try:
        state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; none may leak its advice
        raise CheckpointError(
            f"{path / STATE_FILE} is not an avtime checkpoint state: torch.load with "
            f"weights_only=True refused it ({type(exc).__name__}); avtime loads tensors only, "
            "so a file from elsewhere, corrupt or holding code, is never run"
        ) from None
    return meta, state


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load `weights` into `module`, or raise `CheckpointError` naming `where` (the checkpoint
    file) and the first tensors whose names or shapes differ, in place of torch's long message.
    A `module.` prefix (DDP) on the saved names is ignored."""
    weights = {k.removeprefix("module."): v for k, v in weights.items()}
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} is {list(weights[k].shape)} there and {list(v.shape)} in the model"
        for k, v in own.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"{len(shapes)} shapes differ ({shapes[0]})"] if shapes else []
        parts += [f"{len(missing)} tensors missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise CheckpointError(
            f"{where} does not match the model its config.yaml describes: {'; '.join(parts)}. "
            "Was config.yaml edited, or copied from another run?"
        )
    module.load_state_dict(weights)


def read_config_yaml(folder: str | Path) -> str:
    """The resolved run config YAML stored in a local checkpoint folder."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; is {folder} an avtime checkpoint?")
    return path.read_text()


def fetch(uri: str) -> tuple[Path, Path | None]:
    """A local folder with the checkpoint at `uri` (local path or s3://).

    Returns (folder, temp root to delete afterwards, or None when `uri` is already local).
    """
    from avtime.pipelines import storage

    if not storage.is_s3(uri):
        return Path(uri), None
    tmp = Path(tempfile.mkdtemp(prefix="avtime-ckpt-"))
    files = storage.list_files(uri)
    if not files:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileNotFoundError(f"no checkpoint files under {uri}")
    for f in files:
        rel = f[len(uri.rstrip("/")) + 1 :]
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        storage.get_file(f, tmp / rel)
    return tmp, tmp


def find_latest(fs: Any, run_dir: str) -> tuple[str, CheckpointMeta] | None:
    """The newest complete, committed checkpoint under `run_dir` of pyarrow filesystem `fs`.

    Committed means Ray Train registered it: it is listed in the run's
    `checkpoint_manager_snapshot.json` (a folder uploaded just before a crash is not, and
    Ray restores the one before). Without a snapshot, every `step_*` folder counts. Complete
    means its `meta.json` and `state.pt` are both there. Returns (path, meta) or None.
    """
    for folder in _candidates(fs, run_dir.rstrip("/")):
        return folder, CheckpointMeta.from_json(_read(fs, f"{folder}/{META_FILE}").decode())
    return None


def find_resumable(
    fs: Any, run_dir: str, notify: Callable[[str], None] = print
) -> tuple[str, CheckpointMeta] | None:
    """The newest checkpoint under `run_dir` that loads as `load` would load it.

    Candidates are `find_latest`'s, newest first. One whose `meta.json` or `state.pt` does not
    load (truncated by a full disk, damaged in transit) is skipped with one line to `notify`
    naming the file, and the one before it is tried. None when there is no checkpoint;
    `CheckpointError` when there are some and none loads.
    """
    skipped: list[str] = []
    for folder in _candidates(fs, run_dir.rstrip("/")):
        try:
            meta = CheckpointMeta.from_json(_read(fs, f"{folder}/{META_FILE}").decode())
            torch.load(io.BytesIO(_read(fs, f"{folder}/{STATE_FILE}")), weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds; each means unreadable
            skipped.append(folder)
            notify(
                f"checkpoint {folder} is unreadable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}); trying the one before"
            )
            continue
        if skipped:
            notify(f"resuming from {folder} (step {meta.step}), the newest readable checkpoint")
        return folder, meta
    if skipped:
        raise CheckpointError(
            f"none of the {len(skipped)} checkpoints in {run_dir} is readable (newest: "
            f"{skipped[0]}); delete the run folder to start again, or train under another --name"
        )
    return None


def _read(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return bytes(f.read())


def _candidates(fs: Any, base: str) -> list[str]:
    """Checkpoint folders under `base` with both files present, newest first (see find_latest)."""
    import pyarrow.fs as pafs

    names = _committed(fs, base)
    if names is None:
        info = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=False))
        names = [i.base_name for i in info if i.type == pafs.FileType.Directory]
    out = []
    for name in sorted((n for n in names if n.startswith(DIR_PREFIX)), reverse=True):
        folder = f"{base}/{name}"
        state, meta = fs.get_file_info([f"{folder}/{STATE_FILE}", f"{folder}/{META_FILE}"])
        if state.type == pafs.FileType.File and meta.type == pafs.FileType.File:
            out.append(folder)
    return out


def committed(fs: Any, run_dir: str) -> list[str] | None:
    """The checkpoint folder names Ray Train keeps for the run (its snapshot), or None."""
    return _committed(fs, run_dir.rstrip("/"))


def _committed(fs: Any, run_dir: str) -> list[str] | None:
    """Checkpoint folder names in Ray Train's snapshot of the run, or None without one."""
    import pyarrow.fs as pafs

    path = f"{run_dir}/{RAY_SNAPSHOT}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        with fs.open_input_stream(path) as f:
            doc = json.loads(f.read().decode())
        return [str(r["checkpoint_dir_name"]) for r in doc.get("checkpoint_results", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
