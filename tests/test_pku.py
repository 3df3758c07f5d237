"""PKU-MMD reader on small files written in the official layout."""

import numpy as np
import pytest

from feeders.formats import pku
from feeders.prepare import prepare
from feeders.store import open_store

VIDEOS = {  # video id -> (frames, label lines)
    "0002-L": (12, ["3,0,4,1", "51,4,10,2"]),
    "0002-M": (8, ["1,2,8,1"]),
    "0007-R": (9, ["10,1,3,1", "10,3,6,1", "2,6,9,1"]),
}
SPLITS = {
    "cross-subject.txt": (["0002-L", "0002-M"], ["0007-R"]),
    "cross-view.txt": (["0002-M", "0007-R"], ["0002-L"]),
}


def video_data(name, frames):
    """Deterministic ``(T, 2, 25, 3)`` coordinates; body 2 absent (zero) in 0002-M."""
    rng = np.random.default_rng(sum(map(ord, name)))
    data = rng.normal(size=(frames, 2, 25, 3)).round(4).astype(np.float32)
    if name == "0002-M":
        data[:, 1] = 0
    return data


def write_split(path, train, val):
    path.write_text("Training videos: \n" + ", ".join(train) + ",\n"
                    "Validataion videos: \n" + ", ".join(val) + "\n")


@pytest.fixture
def pku_dir(tmp_path):
    root = tmp_path / "pku"
    for sub in ("skeleton", "label", "split"):
        (root / sub).mkdir(parents=True)
    for name, (frames, labels) in VIDEOS.items():
        data = video_data(name, frames).reshape(frames, -1)
        (root / "skeleton" / f"{name}.txt").write_text(
            "\n".join(" ".join(f"{v:.4f}" for v in row) for row in data) + "\n")
        (root / "label" / f"{name}.txt").write_text("\n".join(labels) + "\n")
    for fname, (train, val) in SPLITS.items():
        write_split(root / "split" / fname, train, val)
    return root


def test_read_skeleton_layout(pku_dir):
    data = pku.read_skeleton(pku_dir / "skeleton" / "0002-L.txt")
    np.testing.assert_allclose(data, video_data("0002-L", 12), atol=1e-6)
    first_line = (pku_dir / "skeleton" / "0002-L.txt").read_text().split("\n")[0].split()
    # line layout: body 1 joint 1 xyz, body 1 joint 2 xyz, ..., then body 2
    assert data[0, 0, 1, 2] == pytest.approx(float(first_line[5]))
    assert data[0, 1, 0, 0] == pytest.approx(float(first_line[75]))


def test_recognition_clips_and_splits(pku_dir, tmp_path):
    summary = prepare("pku", pku_dir, tmp_path / "out", task="recognition")
    store = open_store(tmp_path / "out", verify=True)
    assert summary["num_sequences"] == len(store) == 6
    assert store.num_classes == 51 and store.class_names[0] == "bow"
    assert store.names.tolist() == ["0002-L_0", "0002-L_1", "0002-M_0",
                                    "0007-R_0", "0007-R_1", "0007-R_2"]
    assert store.labels.tolist() == [2, 50, 0, 9, 9, 1]
    assert store.lengths.tolist() == [4, 6, 6, 2, 3, 3]
    assert store.views.tolist() == [1, 1, 2, 3, 3, 3]
    np.testing.assert_allclose(store.sequence(1), video_data("0002-L", 12)[4:10], atol=1e-6)
    np.testing.assert_allclose(store.sequence(2), video_data("0002-M", 8)[2:8], atol=1e-6)
    assert not store.sequence(2)[:, 1].any()  # absent second body stays zero
    assert store.split_indices("xsub_train").tolist() == [0, 1, 2]
    assert store.split_indices("xsub_val").tolist() == [3, 4, 5]
    assert store.split_indices("xview_train").tolist() == [2, 3, 4, 5]
    assert store.split_indices("xview_val").tolist() == [0, 1]


def test_detection_frame_labels(pku_dir, tmp_path):
    prepare("pku", pku_dir, tmp_path / "out", task="detection", workers=2)
    store = open_store(tmp_path / "out", verify=True)
    assert store.num_classes == 52 and store.class_names[:2] == ["background", "bow"]
    assert store.names.tolist() == ["0002-L", "0002-M", "0007-R"]
    assert store.lengths.tolist() == [12, 8, 9]
    np.testing.assert_allclose(store.sequence(2), video_data("0007-R", 9), atol=1e-6)
    assert store.frame_array("frame_labels", 0).tolist() == [3] * 4 + [51] * 6 + [0] * 2
    assert store.frame_array("frame_labels", 1).tolist() == [0, 0] + [1] * 6
    assert store.frame_array("frame_labels", 2).tolist() == [0, 10, 10, 10, 10, 10, 2, 2, 2]
    assert store.labels.tolist() == [51, 1, 10]  # most frequent action per video
    assert store.split_indices("xsub_val").tolist() == [2]
    assert store.split_indices("xview_train").tolist() == [1, 2]


def test_official_label_folder_and_overrides(pku_dir, tmp_path):
    (pku_dir / "label").rename(pku_dir / "Train_Label_PKU_final")
    prepare("pku", pku_dir, tmp_path / "a")
    assert len(open_store(tmp_path / "a")) == 6
    other = tmp_path / "labels2"
    other.mkdir()
    for name in VIDEOS:
        (other / f"{name}.txt").write_text("5,0,2,1\n")
    write_split(tmp_path / "my-cross-view.txt", ["0002-L"], ["0002-M", "0007-R"])
    prepare("pku", pku_dir, tmp_path / "b", labels=other,
            split_file=[tmp_path / "my-cross-view.txt"])
    store = open_store(tmp_path / "b")
    assert store.labels.tolist() == [4, 4, 4]
    assert sorted(store.splits) == ["xview_train", "xview_val"]
    assert store.split_indices("xview_val").tolist() == [1, 2]


@pytest.mark.parametrize("file, line, text, message", [
    ("skeleton/0002-M.txt", 3, "1.0 2.0", "0002-M.txt:3: 2 values, expected 150"),
    ("skeleton/0002-M.txt", 2, "x " * 150, "0002-M.txt:2: non-numeric value"),
    ("label/0007-R.txt", 2, "10;3;6;1", "0007-R.txt:2: expected 'class,start,end,confidence'"),
    ("label/0007-R.txt", 1, "52,1,3,1", "0007-R.txt:1: class 52 outside 1..51"),
    ("label/0007-R.txt", 3, "2,6,10,1", "0007-R.txt:3: interval \\[6, 10\\) not within"),
    ("split/cross-view.txt", 1, "0002-L, 0002-M", "cross-view.txt:1: video ids before"),
])
def test_corrupt_lines(pku_dir, tmp_path, file, line, text, message):
    path = pku_dir / file
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        prepare("pku", pku_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_label_file_and_folders(pku_dir, tmp_path, out_root):
    (pku_dir / "label" / "0002-M.txt").unlink()
    with pytest.raises(ValueError, match="0002-M.txt: no label file"):
        prepare("pku", pku_dir, tmp_path / "out")
    with pytest.raises(ValueError, match="no skeleton folder"):
        prepare("pku", tmp_path, out_root / "out")


@pytest.mark.parametrize("convention, lines, expected", [
    # default: 0-based, end exclusive -> frames[start:end]
    ("0-exclusive", ["3,0,4,1", "51,4,10,2"], [3] * 4 + [51] * 6 + [0] * 2),
    # 1-based, end included -> frames[start - 1:end]: the same instances written 1..4, 5..10
    ("1-inclusive", ["3,1,4,1", "51,5,10,2"], [3] * 4 + [51] * 6 + [0] * 2),
    ("1-inclusive", ["3,0,4,1", "51,4,10,2"], None),      # start 0 is not 1-based
    ("0-exclusive", ["3,1,12,1", "51,12,13,1"], None),    # end 13 > 12 frames
    ("1-inclusive", ["3,1,12,1"], [3] * 12),              # the whole video, 1..12
])
def test_label_frame_conventions(pku_dir, tmp_path, convention, lines, expected):
    (pku_dir / "label" / "0002-L.txt").write_text("\n".join(lines) + "\n")
    if expected is None:
        with pytest.raises(ValueError, match="0002-L.txt"):
            prepare("pku", pku_dir, tmp_path / "out", task="detection", label_frames=convention)
        return
    prepare("pku", pku_dir, tmp_path / "out", task="detection", label_frames=convention)
    store = open_store(tmp_path / "out")
    assert store.frame_array("frame_labels", 0).tolist() == expected


def test_real_phase2_skeleton(shared_data):
    """A10N08-L.txt: 1040 frames x 150 values; the second body non-zero in 728 frames (awk)."""
    path = shared_data / "pku_samples" / "A10N08-L.txt"
    data = pku.read_skeleton(path)
    assert data.shape == (1040, 2, 25, 3) and data.dtype == np.float32
    assert np.allclose(data[0, 0, 0], [-0.304560, 0.212575, 2.728912])
    assert int(np.any(data[:, 1] != 0, axis=(1, 2)).sum()) == 728
    assert np.isfinite(data).all()
