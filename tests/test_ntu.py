"""NTU RGB+D raw .skeleton reader: real-file golden values, denoising rules, errors, splits."""

from pathlib import Path

import numpy as np
import pytest

from feeders.formats import ntu
from feeders.prepare import prepare
from feeders.store import open_store

NTU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ntu_samples"
GOLDEN_FRAMES = {"A001": 103, "A011": 82, "A003": 100, "A034": 71, "A017": 124, "A058": 70}
LONG_ID = "72057594037944738"


def real_files():
    files = sorted(NTU_DIR.glob("*/*.skeleton"))
    if not files:
        pytest.skip(f"real NTU samples not found under {NTU_DIR}")
    return files


def skeleton_text(frames):
    """frames: list of frames, each a list of (body_id, xyz (25, 3)) -> .skeleton file text."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body_id, xyz in bodies:
            lines.append(f"{body_id} 0 1 1 1 1 0 0.01 -0.2 2")
            lines.append(str(len(xyz)))
            lines += [" ".join(f"{v:.6f}" for v in (*p, 300, 200, 1000, 500, 0, 0, 1, 0)) + " 2"
                      for p in xyz]
    return "\n".join(lines) + "\n"


def upright(offset=0.0, x_width=0.2, height=1.0):
    """(25, 3) joints with x-range ``x_width`` and y-range ``height``, shifted in z."""
    xyz = np.zeros((25, 3))
    xyz[:, 0] = np.linspace(0, x_width, 25)
    xyz[:, 1] = np.linspace(0, height, 25)
    xyz[:, 2] = 3.0 + offset
    return xyz


def test_golden_frame_counts_and_labels():
    for path in real_files():
        (rec,) = ntu.read(str(path))
        action = path.stem[-4:]
        assert rec.data.shape == (GOLDEN_FRAMES[action], 2, 25, 3), path.name
        assert rec.label == int(action[1:]) - 1
        assert rec.name == path.stem
        assert np.isfinite(rec.data).all() and np.abs(rec.data[:, 0]).sum() > 0
        second_body = np.abs(rec.data[:, 1]).sum()
        assert (second_body > 0) == (action == "A058"), path.name


def test_real_values_match_text():
    path = next(p for p in real_files() if "A058" in p.name)
    lines = path.read_text().splitlines()
    first_joint = [float(v) for v in lines[4].split()[:3]]  # frame 1, body 1, joint 1
    num_frames, bodies = ntu.read_skeleton_file(path, 25)
    assert num_frames == 70 and len(bodies) == 2
    assert bodies[0].body_id == lines[2].split()[0]  # 17-digit id kept exactly, as a string
    np.testing.assert_allclose(bodies[0].xyz[0, 0], first_joint, rtol=1e-6)


def test_parse_name():
    assert ntu.parse_name(Path("S017C003P020R002A120.skeleton")) == (17, 3, 20, 2, 120)
    with pytest.raises(ValueError, match="bad_name.skeleton: file name does not match"):
        ntu.parse_name(Path("bad_name.skeleton"))


def test_noise_ratio_and_motion_hand_computed():
    frames = np.arange(10)
    xyz = np.stack([upright() for _ in frames])
    xyz[:7, :, 0] *= 10  # x-range 2.0 > 0.8 * y-range 1.0 in 7 of 10 frames
    assert ntu.noisy_frame_ratio(ntu.Body("a", frames, xyz)) == pytest.approx(0.7)
    xyz[6] = upright()
    assert ntu.noisy_frame_ratio(ntu.Body("a", frames, xyz)) == pytest.approx(0.6)
    moving = np.zeros((4, 25, 3))
    moving[:, :, 0] = np.array([1, -1, 1, -1])[:, None]  # variance 1 for x of every joint
    assert ntu.motion(ntu.Body("m", np.arange(4), moving)) == pytest.approx(25.0)


def test_denoising_rules(tmp_path):
    """short body dropped, noisy body dropped, the two most-moving bodies kept in order."""
    frames = [[("1", upright())] for _ in range(10)]  # short body, alone in frames 0-9
    for t in range(30):
        frames.append([
            ("2", upright(0.01 * t)),                   # moves a little
            ("3", upright(0.5 * t, x_width=2.0)),       # noisy: wide in x, moves most
            ("4", upright(0.05 * t)),                   # moves most among the clean bodies
            ("5", upright(0.0)),                        # static
        ])
    path = tmp_path / "S001C001P001R001A050.skeleton"
    path.write_text(skeleton_text(frames))
    (rec,) = ntu.read(str(path))
    assert rec.data.shape == (30, 2, 25, 3)  # frames with only the dropped body are removed
    np.testing.assert_allclose(rec.data[:, 0], [upright(0.05 * t) for t in range(30)], atol=1e-6)
    np.testing.assert_allclose(rec.data[:, 1], [upright(0.01 * t) for t in range(30)], atol=1e-6)
    assert (rec.label, rec.subject, rec.view, rec.setup) == (49, 1, 1, 1)


def test_single_body_and_all_short_bodies_are_kept(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text(skeleton_text([[("7", upright())]] * 3 + [[]]))
    (rec,) = ntu.read(str(path))
    assert rec.data.shape == (3, 2, 25, 3) and not rec.data[:, 1].any()
    # two bodies, both in <= 11 frames: the length rule would remove both, so both stay
    path.write_text(skeleton_text([[(LONG_ID, upright()), ("8", upright(1.0 * t))]
                                   for t in range(5)]))
    (rec,) = ntu.read(str(path))
    assert rec.data[:, 1].any()


def test_file_without_bodies_is_skipped(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text(skeleton_text([[], []]))
    assert ntu.read(str(path)) == []


def test_errors_name_file_and_line(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    text = skeleton_text([[("1", upright())], [("1", upright())]])
    path.write_text(text.replace("\n25\n", "\n20\n", 1))
    with pytest.raises(ValueError, match=f"{path.name}:4: joint count 20, expected 25"):
        ntu.read(str(path))
    lines = text.splitlines()
    path.write_text("\n".join(lines[:40]))  # frame 2 cut short
    with pytest.raises(ValueError, match=f"{path.name}:40: file truncated"):
        ntu.read(str(path))
    lines[10] = " ".join(lines[10].split()[:11])
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=f"{path.name}:11: expected 12 numbers"):
        ntu.read(str(path))
    path.write_text("abc\n")
    with pytest.raises(ValueError, match=f"{path.name}:1: expected the frame count"):
        ntu.read(str(path))


def test_prepare_real_samples_ntu60_splits(tmp_path):
    src = real_files()[0].parent.parent
    summary = prepare("ntu", src, tmp_path / "ntu", workers=1)
    store = open_store(tmp_path / "ntu", verify=True)
    assert summary["num_sequences"] == len(store) == 6
    assert store.num_classes == 60 and store.class_names[57] == "handshaking"
    by_name = {n[-4:]: i for i, n in enumerate(store.names)}
    assert {a: int(store.lengths[i]) for a, i in by_name.items()} == GOLDEN_FRAMES
    names = lambda split: sorted(store.names[store.split_indices(split)].tolist())
    # subjects 1, 8, 15 train, 3 test; cameras 2, 3 train, 1 test
    assert [n[-4:] for n in names("xsub_val")] == ["A003", "A017"]
    assert [n[-4:] for n in names("xview_train")] == ["A058", "A017"]
    assert len(names("xsub_train")) == 4 and len(names("xview_val")) == 4


def test_prepare_ignore_and_ntu120_auto(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    body = [[("1", upright(0.1 * t))] for t in range(3)]
    for name in ("S001C001P001R001A061", "S002C002P045R001A001", "S003C001P002R001A002"):
        (src / f"{name}.skeleton").write_text(skeleton_text(body))
    (src / "S001C001P001R001A010.skeleton").write_text(skeleton_text([[]]))  # no skeleton
    ignore = tmp_path / "ignore.txt"
    ignore.write_text("S003C001P002R001A002\n")
    summary = prepare("ntu", src, tmp_path / "out", ignore=ignore)
    assert summary["skipped_items"] == 1
    store = open_store(tmp_path / "out")
    assert store.num_classes == 120 and store.class_names[60] == "put on headphone"
    assert store.names.tolist() == ["S001C001P001R001A061", "S002C002P045R001A001"]
    assert store.labels.tolist() == [60, 0]
    assert sorted(store.splits) == ["xset_train", "xset_val", "xsub_train", "xsub_val"]
    assert store.split_indices("xsub_train").tolist() == [0, 1]  # subjects 1 and 45
    assert store.split_indices("xset_train").tolist() == [1]  # setup 2 is even
    with pytest.raises(ValueError, match="A061 outside 1..60"):
        prepare("ntu", src, tmp_path / "out60", benchmark="ntu60")
