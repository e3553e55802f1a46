"""`avtime embed` and `avtime search` end to end: real Ray, SeaweedFS S3, real mp4s.

Five synthetic videos are preprocessed to one-segment shards (one shard per video), embedded
with the `smoke` preset's tiny model at a seeded random init, and compared with eval's feature
path (training/eval/features.py) on the same clips.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avtime.pipelines.ingest.lock import DestinationLock
from avtime.training.cli.main import main
from avtime.training.eval.clips import ClipConfig
from avtime.training.eval.embed import read_embeddings, read_manifest
from avtime.training.eval.features import extract_shard_features
from avtime.training.eval.model_io import load_model
from avtime.training.tracking.runs import manifest_hash
from tests.media import Spec, write_media
from tests.servers import scoped_environ

pytestmark = pytest.mark.integration
MODEL = ["--checkpoint", "random", "--config", "smoke", "--clips", "2"]


@pytest.fixture(scope="module")
def aws(s3_server: Any) -> Iterator[Any]:
    """The test S3's AWS_* variables, set before the module's Ray starts (its workers read S3)."""
    with scoped_environ(s3_server.env):
        yield s3_server


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, aws: Any, ray_local: None) -> dict[str, str]:
    """A corpus of five 2-second videos with audio and its shards (one segment each)."""
    root = tmp_path_factory.mktemp("embed-data")
    argv = ["synth", str(root / "corpus"), "--videos", "5", "--seconds", "2", "--quiet"]
    assert main(argv + ["--duration-jitter", "0"]) == 0
    pre = ["preprocess", str(root / "corpus"), str(root / "shards"), "--short-side", "32"]
    assert main(pre + ["--rows-per-shard", "1"]) == 0
    return {"corpus": str(root / "corpus"), "shards": str(root / "shards"), "root": str(root)}


def _embed(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["embed", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _keys(table: Any) -> list[tuple[str, int, int]]:
    return list(
        zip(table["video_id"].to_pylist(), table["segment"].to_pylist(), table["clip"].to_pylist())
    )


@pytest.fixture(scope="module")
def s3_index(data: dict[str, str], aws: Any) -> str:
    """The shards embedded to s3:// (two input shards per part)."""
    out = aws.bucket("embeddings") + "/run1"
    argv = [*MODEL, "--data", data["shards"], "--out", out, "--shards-per-part", "2"]
    assert main(["embed", *argv]) == 0
    return out


def test_embed_to_s3_matches_eval_features(
    data: dict[str, str], s3_index: str, capsys: pytest.CaptureFixture[str]
) -> None:
    table = read_embeddings(s3_index)
    manifest = json.loads(Path(data["shards"], "manifest.json").read_text())
    segments = int(manifest["counts"]["rows"])
    assert table.num_rows == 2 * segments and len(set(_keys(table))) == table.num_rows
    assert table.schema.field("video").type.list_size == table.schema.field("audio").type.list_size
    assert all(a < b for a, b in zip(table["t_start"].to_pylist(), table["t_end"].to_pylist()))
    doc = read_manifest(s3_index)
    assert doc is not None and doc["complete"] and doc["rows"] == table.num_rows
    assert doc["segments"] == segments and doc["checkpoint"] == "random"
    assert doc["data_digest"] == manifest_hash(data["shards"])
    sizes = {m: table.schema.field(m).type.list_size for m in ("video", "audio")}
    assert doc["dims"] == sizes and doc["modalities"] == ["video", "audio"]
    loaded = load_model("random", config="smoke")
    feats = extract_shard_features(
        data["shards"], loaded.model, loaded.cfg.model, ClipConfig.from_run(loaded.cfg, 2),
        ("video", "audio"),
    )  # fmt: skip
    order = np.lexsort(
        (table["clip"].to_numpy(), table["segment"].to_numpy(), np.asarray(_keys(table))[:, 0])
    )
    for mod, ref in (("video", feats.video), ("audio", feats.audio)):
        assert ref is not None
        got = np.asarray(table[mod].to_pylist(), dtype=np.float32)[order]
        want = ref.numpy()
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() >= 1 - 1e-5, (mod, cos.min())


def test_killed_run_resumes_without_duplicates(
    data: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "emb"
    argv = [*MODEL, "--data", data["shards"], "--out", str(out), "--shards-per-part", "1"]
    rc, stdout, err = _embed(capsys, *argv)
    assert rc == 0, err
    before = read_embeddings(str(out))
    # A run killed while writing part 3 and before part 4: part 3's files are there (and a
    # stray copy of one), its commit marker is not; part 4 was never written.
    part3 = out / "part-00003"
    stray = next(part3.glob("*.parquet"))
    (part3 / f"stray-{stray.name}").write_bytes(stray.read_bytes())
    (out / "_progress" / "part-00003.json").unlink()
    for f in (out / "part-00004").glob("*"):
        f.unlink()
    (out / "_progress" / "part-00004.json").unlink()
    rc, stdout, err = _embed(capsys, *argv)
    assert rc == 0, err
    assert "3 of 5 parts were already written" in stdout
    after = read_embeddings(str(out))
    assert after.num_rows == before.num_rows and len(set(_keys(after))) == after.num_rows
    assert sorted(_keys(after)) == sorted(_keys(before))
    assert not list(part3.glob("stray-*"))


def test_second_writer_is_refused(
    data: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "locked"
    lock = DestinationLock(str(out), settle_s=0.0)
    lock.acquire()
    try:
        rc, stdout, err = _embed(capsys, *MODEL, "--data", data["shards"], "--out", str(out))
    finally:
        lock.release()
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "another run" in err and "Traceback" not in err
    assert not (out / "part-00000").exists()


def test_other_model_config_is_refused(
    data: dict[str, str], s3_index: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*MODEL, "--data", data["shards"], "--out", s3_index, "--set", "model.tiny_width=4"]
    rc, stdout, err = _embed(capsys, *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "another model" in err and "Traceback" not in err
    assert read_manifest(s3_index)["config_digest"] in err  # type: ignore[index]


def _search(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["search", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_search_finds_the_query_video_first(
    data: dict[str, str], s3_index: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = sorted(Path(data["corpus"]).rglob("*.mp4"))
    query = videos[2]
    png = tmp_path / "search.png"
    rc, out, err = _search(capsys, "--index", s3_index, "--query", str(query), "--k", "3",
                           "--png", str(png))  # fmt: skip
    assert rc == 0, err
    hits = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(hits) == 3
    assert hits[0].split()[2].endswith(query.name)
    assert float(hits[0].split()[1]) == pytest.approx(1.0, abs=1e-4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_search_across_modalities_by_video_id(
    s3_index: str, capsys: pytest.CaptureFixture[str]
) -> None:
    table = read_embeddings(s3_index, ["video_id", "source"])
    vid = table["video_id"][0].as_py()
    rc, out, err = _search(capsys, "--index", s3_index, "--query", vid, "--from", "audio",
                           "--to", "video", "--k", "4")  # fmt: skip
    assert rc == 0, err
    scores = [float(line.split()[1]) for line in out.splitlines() if line.startswith("  ")]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in scores)


def test_search_bad_inputs_one_line_each(
    data: dict[str, str], s3_index: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    silent = write_media(tmp_path / "silent.mp4", Spec(seconds=2.0, audio_rate=None))
    rc, out, err = _search(capsys, "--index", s3_index, "--query", str(silent), "--from", "audio")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "has no audio" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = _search(capsys, "--index", str(empty), "--query", str(silent))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not an embeddings index" in err
    # an index whose manifest lists no committed rows
    doc = read_manifest(s3_index)
    assert doc is not None
    (empty / "manifest.json").write_text(json.dumps({**doc, "parts": []}))
    rc, out, err = _search(capsys, "--index", str(empty), "--query", str(silent))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "is empty" in err
    rc, out, err = _search(capsys, "--index", s3_index, "--query", "no-such-video")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "neither a video file" in err


def test_pyfunc_model_loads_by_alias_and_predicts_embed_rows(
    data: dict[str, str], s3_index: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoders logged from code: `mlflow.pyfunc.load_model("models:/NAME@ALIAS")` gives
    the embeddings `embed` wrote for the same clips; no pickle among the model's files.
    (A sqlite store, with its artifacts under tmp_path.)"""
    import mlflow
    import pyarrow.parquet as pq

    from avtime.pipelines.pretext.stream import shard_paths
    from avtime.training.eval.features import SHARD_COLUMNS, sample_clips
    from avtime.training.eval.pyfunc import log_embedder

    loaded = load_model("random", config="smoke")
    clip = ClipConfig.from_run(loaded.cfg, 2)
    dims = {"video": loaded.model.video_dim, "audio": loaded.model.audio_dim}
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged = log_embedder(loaded, clip, dims, name="avtime-embedder", alias="prod", uri=uri)
    assert logged.model_uri == "models:/avtime-embedder@prod" and logged.version == 1
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(logged.model_uri)
    inputs = {i.name for i in model.metadata.get_input_schema().inputs}
    assert inputs == {"video", "audio"}
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".cloudpickle")]
    batch = sample_clips(
        pq.read_table(shard_paths(data["shards"])[0], columns=SHARD_COLUMNS), cfg=clip
    )
    out = model.predict({"video": batch["video"], "audio": batch["audio"]})
    table = read_embeddings(s3_index)
    rows = {k: i for i, k in enumerate(_keys(table))}
    for j, key in enumerate(zip(batch["video_id"], batch["segment"], batch["clip"])):
        i = rows[(str(key[0]), int(key[1]), int(key[2]))]
        for mod in ("video", "audio"):
            want = np.asarray(table[mod][i].as_py(), dtype=np.float32)
            got = np.asarray(out[mod][j], dtype=np.float32)
            cos = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
            assert cos >= 1 - 1e-5, (mod, key, cos)


def test_embed_register_option_logs_a_loadable_model(
    data: dict[str, str], s3_index: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`avtime embed ... --register NAME@ALIAS` on a finished DST: every part is skipped, and the
    model it registers loads by alias and embeds a clip as the index holds it."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    argv = [*MODEL, "--data", data["shards"], "--out", s3_index, "--shards-per-part", "2"]
    rc, out, err = _embed(capsys, *argv, "--register", "avtime-cli@candidate")
    assert rc == 0, err
    assert "3 of 3 parts were already written" in out
    assert "models:/avtime-cli@candidate" in out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/avtime-cli@candidate")
    outputs = {o.name for o in model.metadata.get_output_schema().inputs}
    assert outputs == {"video", "audio"}


def test_embed_raw_videos_decodes_them_first(
    data: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--data as a folder of mp4s: decoded into DST/_shards by the ingest job, then embedded;
    a rerun resumes both (no part written twice)."""
    corpus = tmp_path / "two"
    corpus.mkdir()
    for video in sorted(Path(data["corpus"]).rglob("*.mp4"))[:2]:
        (corpus / video.name).write_bytes(video.read_bytes())
    out = tmp_path / "emb"
    argv = ["--checkpoint", "random", "--config", "smoke", "--clips", "3", "--modality", "video",
            "--data", str(corpus), "--out", str(out)]  # fmt: skip
    rc, stdout, err = _embed(capsys, *argv)
    assert rc == 0, err
    assert "decoding its videos" in stdout and (out / "_shards" / "manifest.json").is_file()
    table = read_embeddings(str(out))
    assert table.column_names == ["video_id", "source", "segment", "clip", "t_start", "t_end",
                                  "video"]  # fmt: skip
    assert table.num_rows == 3 * len(set(zip(table["video_id"].to_pylist(),
                                             table["segment"].to_pylist())))  # fmt: skip
    assert set(Path(s).name for s in table["source"].to_pylist()) == {
        p.name for p in corpus.iterdir()
    }
    rc, stdout, err = _embed(capsys, *argv)
    assert rc == 0, err
    assert "1 of 1 parts were already written" in stdout
    assert read_embeddings(str(out)).num_rows == table.num_rows


def test_stride_clips_start_every_stride_seconds_of_a_real_mp4(
    data: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 3-second mp4 (75 stored frames at the ingest's 25 fps), `--stride 0.7`: grid times 0,
    0.7, 1.4, 2.1, 2.8 start at stored frames half_up(t * 25) = 0, 18, 35, 53, 70, so t_start is
    0, 0.72, 1.4, 2.12, 2.8 and t_end 4 frames (the smoke clip) later. The same whether embed
    decodes the raw video itself (one 10 s segment) or reads shards of 1-second segments, where
    the grid crosses segment boundaries (segments 0, 0, 1, 2, 2)."""
    folder = tmp_path / "one"
    folder.mkdir()
    write_media(folder / "three.mp4", Spec(seconds=3.0))
    want_start = [0.0, 0.72, 1.4, 2.12, 2.8]
    want_end = [t + 4 / 25 for t in want_start]
    argv = ["--checkpoint", "random", "--config", "smoke", "--modality", "video", "--stride", "0.7"]
    rc, out, err = _embed(capsys, *argv, "--data", str(folder), "--out", str(tmp_path / "raw"))
    assert rc == 0, err
    pre = ["preprocess", str(folder), str(tmp_path / "shards"), "--short-side", "32"]
    assert main([*pre, "--segment-seconds", "1"]) == 0
    rc, out, err = _embed(capsys, *argv, "--data", str(tmp_path / "shards"),
                          "--out", str(tmp_path / "seg"))  # fmt: skip
    assert rc == 0, err
    for dst, segments in (("raw", [0] * 5), ("seg", [0, 0, 1, 2, 2])):
        table = read_embeddings(str(tmp_path / dst)).sort_by("t_start")
        assert table.num_rows == 5, dst
        assert table["t_start"].to_pylist() == pytest.approx(want_start, abs=1e-9), dst
        assert table["t_end"].to_pylist() == pytest.approx(want_end, abs=1e-9), dst
        assert table["segment"].to_pylist() == segments, dst
        assert read_manifest(str(tmp_path / dst))["clips"]["stride_s"] == 0.7  # type: ignore[index]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--stride", "0"], "--stride must be a positive number of seconds"),
        (["--stride", "-1.5"], "--stride must be a positive number of seconds"),
        (["--stride", "nan"], "--stride must be a positive number of seconds"),
        (["--stride", "half"], "--stride must be a number of seconds, got 'half'"),
        (["--stride", "1", "--clips", "2"], "--clips and --stride exclude each other"),
    ],
)
def test_bad_stride_is_one_line_and_exit_2(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--checkpoint", "random", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    rc, out, err = _embed(capsys, *argv, *flags)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()
    if "--clips" not in flags:  # search takes --stride too, checked the same way
        rc, out, err = _search(capsys, "--index", str(tmp_path), "--query", "x", *flags)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_search_query_file_with_its_own_stride(
    data: dict[str, str], s3_index: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The index holds 2 clips per segment; `--stride 0.5` cuts the 2-second query video into
    clips at 0, 0.5, 1 and 1.5 s instead (4), and it still finds its own video first."""
    query = sorted(Path(data["corpus"]).rglob("*.mp4"))[1]
    rc, out, err = _search(capsys, "--index", s3_index, "--query", str(query), "--stride", "0.5",
                           "--k", "2")  # fmt: skip
    assert rc == 0, err
    assert f"search: 4 video clips of {query} -> video" in out
    hits = [line for line in out.splitlines() if line.startswith("  ")]
    assert hits[0].split()[2].endswith(query.name)
