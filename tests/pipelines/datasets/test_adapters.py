"""Dataset adapters on tiny trees in each official layout (files only; no decoding here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from avtime.pipelines.datasets.adapters import LayoutError, list_dataset


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _ucf(root: Path) -> Path:
    lists = root / "ucfTrainTestlist"
    _touch(lists / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n")
    _touch(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\n",
    )
    _touch(
        lists / "testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
        "HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n",
    )
    for s in (2, 3):
        _touch(lists / f"trainlist0{s}.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n")
        _touch(lists / f"testlist0{s}.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\n")
    return root


@pytest.mark.unit
def test_ucf101_official_lists(tmp_path: Path) -> None:
    root = _ucf(tmp_path / "ucf")
    listing = list_dataset("ucf101", str(root), 1)
    assert listing.classes == ("ApplyEyeMakeup", "HandstandPushups")
    train = listing.split_items("train")
    test = listing.split_items("test")
    assert [Path(it.source).name for it in train] == [
        "v_ApplyEyeMakeup_g08_c01.avi",
        "v_HandStandPushups_g08_c01.avi",
    ]
    assert [it.label for it in test] == ["ApplyEyeMakeup", "HandstandPushups"]
    assert all(it.source.startswith(str(root) + "/") for it in listing.items)
    two = list_dataset("ucf101", str(root), 2)
    assert [it.split for it in two.items] == ["train", "test"]


@pytest.mark.unit
def test_ucf101_videos_under_UCF101_folder(tmp_path: Path) -> None:
    root = _ucf(tmp_path / "ucf")
    (root / "UCF-101").mkdir()
    listing = list_dataset("ucf101", str(root), 1)
    assert "/UCF-101/ApplyEyeMakeup/" in listing.items[0].source


@pytest.mark.unit
def test_ucf101_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="ucfTrainTestlist"):
        list_dataset("ucf101", str(tmp_path / "empty"), 1)
    root = _ucf(tmp_path / "ucf")
    (root / "ucfTrainTestlist" / "testlist03.txt").unlink()
    with pytest.raises(LayoutError, match="testlist03.txt"):
        list_dataset("ucf101", str(root), 3)
    with pytest.raises(LayoutError, match="1, 2 or 3"):
        list_dataset("ucf101", str(root), 4)
    _touch(root / "ucfTrainTestlist" / "trainlist02.txt", "Nope/v_x.avi 9\n")
    with pytest.raises(LayoutError, match="'Nope' is not in classInd"):
        list_dataset("ucf101", str(root), 2)


@pytest.mark.unit
def test_hmdb51_split_files(tmp_path: Path) -> None:
    splits = tmp_path / "hmdb" / "testTrainMulti_7030_splits"
    _touch(splits / "brush_hair_test_split1.txt", "a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    _touch(splits / "cartwheel_test_split1.txt", "d.avi 2 \ne.avi 1 \n")
    _touch(splits / "cartwheel_test_split2.txt", "d.avi 1 \ne.avi 2 \n")
    listing = list_dataset("hmdb51", str(tmp_path / "hmdb"), 1)
    got = [(Path(it.source).parent.name, Path(it.source).name, it.split) for it in listing.items]
    assert got == [
        ("brush_hair", "a.avi", "train"),
        ("brush_hair", "b.avi", "test"),
        ("brush_hair", "c.avi", "unused"),
        ("cartwheel", "d.avi", "test"),
        ("cartwheel", "e.avi", "train"),
    ]
    assert listing.classes == ("brush_hair", "cartwheel")
    with pytest.raises(LayoutError, match="_test_split3.txt"):
        list_dataset("hmdb51", str(tmp_path / "hmdb"), 3)


@pytest.mark.unit
def test_esc50_folds(tmp_path: Path) -> None:
    root = tmp_path / "esc"
    (root / "audio").mkdir(parents=True)
    _touch(
        root / "meta" / "esc50.csv",
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
        "5-9032-A-0.wav,5,1,rooster,False,9032,A\n",
    )
    listing = list_dataset("esc50", str(root))
    assert [(Path(it.source).name, it.label, it.split) for it in listing.items] == [
        ("1-100032-A-0.wav", "dog", "1"),
        ("5-9032-A-0.wav", "rooster", "5"),
    ]
    (root / "meta" / "esc50.csv").write_text("name,fold\nx.wav,1\n")
    with pytest.raises(LayoutError, match="category"):
        list_dataset("esc50", str(root))


@pytest.mark.unit
def test_vggsound_matches_clip_names_and_counts_missing(tmp_path: Path) -> None:
    root = tmp_path / "vgg"
    _touch(root / "video" / "abc_000030.mp4")
    _touch(root / "xyz_12000_22000.mkv")
    _touch(
        root / "vggsound.csv",
        "abc,30,dog barking,train\nxyz,12,cat purring,test\ngone,5,dog barking,test\n",
    )
    listing = list_dataset("vggsound", str(root))
    assert [(Path(it.source).name, it.label, it.split) for it in listing.items] == [
        ("abc_000030.mp4", "dog barking", "train"),
        ("xyz_12000_22000.mkv", "cat purring", "test"),
    ]
    assert listing.missing == 1 and "1 clips" in listing.notes[0]


@pytest.mark.unit
def test_folder_labels_csv_and_class_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    _touch(
        root / "labels.csv", "path,label,split\nvideos/a.mp4,drop,train\nvideos/b.mp4,lob,test\n"
    )
    listing = list_dataset("folder", str(root))
    assert [(it.source, it.label, it.split) for it in listing.items] == [
        (str(root / "videos" / "a.mp4"), "drop", "train"),
        (str(root / "videos" / "b.mp4"), "lob", "test"),
    ]
    tree = tmp_path / "tree"
    for cls in ("cats", "dogs"):
        for i in range(4):
            _touch(tree / cls / f"{i}.mp4")
    _touch(tree / "dogs" / "notes.txt")
    listing = list_dataset("folder", str(tree))
    assert len(listing.items) == 8
    assert [it.split for it in listing.items if it.label == "cats"] == [
        "train", "train", "train", "test",
    ]  # fmt: skip


@pytest.mark.unit
def test_unknown_dataset_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="unknown dataset 'kinetics'"):
        list_dataset("kinetics", str(tmp_path))
    with pytest.raises(LayoutError, match="does not exist"):
        list_dataset("folder", str(tmp_path / "nope"))
    (tmp_path / "bare").mkdir()
    with pytest.raises(LayoutError, match="neither labels.csv nor class subfolders"):
        list_dataset("folder", str(tmp_path / "bare"))


@pytest.mark.integration
def test_ucf101_listing_from_s3(tmp_path: Path, s3_env) -> None:  # type: ignore[no-untyped-def]
    root = _ucf(tmp_path / "ucf")
    bucket = s3_env.bucket("avtime-eval-adapters")
    fs = s3_env.filesystem()
    fs.put(str(root) + "/", bucket[len("s3://") :] + "/ucf/", recursive=True)
    listing = list_dataset("ucf101", f"{bucket}/ucf", 1)
    assert listing.classes == ("ApplyEyeMakeup", "HandstandPushups")
    assert listing.items[0].source == f"{bucket}/ucf/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"
