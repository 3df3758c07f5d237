"""OpenPose per-frame JSON reader: the real BODY_25 sample, tracking, empty frames, coordinates."""
import json

import numpy as np
import pytest

from feeders.formats.openpose import track_people
from feeders.prepare import prepare
from feeders.store import open_store


def sample(shared_data):
    folder = shared_data / "openpose_body25"
    if not (folder / "sitting_0").is_dir():
        pytest.skip(f"{folder}/sitting_0 not found")
    return folder


def file_people(folder, t):
    """The people of frame t of the real sample, read directly: list of (25, 3)."""
    path = folder / "sitting_0" / f"sitting_0_{t:012d}_keypoints.json"
    people = json.loads(path.read_text())["people"]
    return [np.array(p["pose_keypoints_2d"], np.float32).reshape(25, 3) for p in people]


def test_real_body25_sample(shared_data, tmp_path):
    folder = sample(shared_data)
    (tmp_path / "labels.csv").write_text("video,label,split\nsitting_0,sitting,train\n")
    prepare("openpose", folder, tmp_path / "ds", labels=tmp_path / "labels.csv", max_bodies=3)
    store = open_store(tmp_path / "ds", verify=True)
    assert (store.layout.name, store.manifest["layout_source"]) == ("body25", "format")
    assert (store.channels, store.bodies, store.class_names) == (3, 3, ["sitting"])
    assert store.names.tolist() == ["sitting_0"] and store.split_indices("train").tolist() == [0]
    x = store.sequence(0)
    assert x.shape == (300, 3, 25, 3)  # 300 frame files
    people = (x[..., 2] > 0).any(axis=-1).sum(axis=1)  # bodies with a detected joint per frame
    # golden: 297 frames with one person, frames 44 and 47 with two, frame 43 with three
    assert {t: int(n) for t, n in enumerate(people) if n != 1} == {43: 3, 44: 2, 47: 2}
    # joint 1 is the neck: x, y, confidence of frame 0 as written in the file
    np.testing.assert_allclose(x[0, 0, 1], [0.478532, 0.404453, 0.707015], rtol=1e-6)
    assert store.layout.joints[1] == "neck"
    for t in (0, 43, 150, 299):  # the tracked main person is the file's first person
        np.testing.assert_array_equal(x[t, 0], file_people(folder, t)[0])
    assert set(map(tuple, x[43].reshape(3, -1))) == \
        set(map(tuple, np.stack(file_people(folder, 43)).reshape(3, -1)))


def test_real_sample_class_folders(shared_data, tmp_path):
    folder = sample(shared_data)
    (tmp_path / "src" / "sitting").mkdir(parents=True)
    (tmp_path / "src" / "sitting" / "sitting_0").symlink_to(folder / "sitting_0")
    prepare("openpose", tmp_path / "src", tmp_path / "ds", max_bodies=1)
    store = open_store(tmp_path / "ds")
    assert store.names.tolist() == ["sitting/sitting_0"] and store.class_names == ["sitting"]
    assert store.sequence(0).shape == (300, 1, 25, 3) and store.splits == {}


def person(center, joints=4, conf=0.9):
    """A (joints, 3) pose around ``center`` (x, y), all joints detected."""
    p = np.zeros((joints, 3), np.float32)
    p[:, 0] = center[0] + 0.01 * np.arange(joints)
    p[:, 1] = center[1]
    p[:, 2] = conf
    return p


def test_tracking_follows_people_not_list_order():
    a, b = (0.2, 0.5), (0.8, 0.5)
    frames = [np.stack([person(a), person(b, conf=0.5)]),
              np.stack([person((0.78, 0.5), conf=0.5), person((0.22, 0.5))]),  # order swapped
              np.zeros((0, 4, 3), np.float32),  # nobody
              np.stack([person((0.75, 0.5), conf=0.5)])]  # only b
    out = track_people(frames, bodies=2)
    assert out.shape == (4, 2, 4, 3)
    np.testing.assert_allclose(out[:, 0, 0, 0], [0.2, 0.22, 0.0, 0.0])  # a: most confident
    np.testing.assert_allclose(out[:, 1, 0, 0], [0.8, 0.78, 0.0, 0.75])
    # a third person is dropped with M=2; M=1 keeps the more confident one
    np.testing.assert_allclose(track_people(frames, bodies=1)[:2, 0, 0, 0], [0.2, 0.22])


def test_tracking_matches_on_joints_seen_before():
    left = person((0.2, 0.5))
    partial = person((0.21, 0.5))
    partial[:2] = 0  # joints 0 and 1 missing: matched on joints 2 and 3
    frames = [np.stack([left, person((0.8, 0.5))]), np.stack([person((0.8, 0.5)), partial])]
    out = track_people(frames, bodies=2)
    first = int(np.argmin(out[0, :, 0, 0]))  # the track holding the left person
    np.testing.assert_array_equal(out[1, first], partial)


def write_video(folder, frames, start=0, numbers=None):
    """frames: list of lists of (V, 3) poses -> OpenPose files in ``folder``."""
    folder.mkdir(parents=True)
    for k, people in enumerate(frames):
        n = numbers[k] if numbers else start + k
        content = {"version": 1.3, "people": [
            {"person_id": [-1], "pose_keypoints_2d": p.reshape(-1).tolist()} for p in people]}
        (folder / f"{folder.name}_{n:012d}_keypoints.json").write_text(json.dumps(content))


def test_empty_and_missing_frames_are_zeros_pixel_coords(tmp_path):
    pose = person((320.0, 240.0), joints=18)
    pose[5] = 0  # a missing joint stays 0, 0, 0
    write_video(tmp_path / "src" / "v1", [[pose], [], [pose]], numbers=[7, 8, 10])
    (tmp_path / "labels.csv").write_text("video,label\nv1,0\n")
    with pytest.raises(ValueError, match=r"v1_000000000007_keypoints.json: coordinates up to "
                                         r"320.* --coords pixel --image-size W H"):
        prepare("openpose", tmp_path / "src", tmp_path / "ds", labels=tmp_path / "labels.csv")
    prepare("openpose", tmp_path / "src", tmp_path / "ds", labels=tmp_path / "labels.csv",
            coords="pixel", image_size=[640, 480])
    store = open_store(tmp_path / "ds")
    assert store.layout.name == "openpose18" and store.class_names == ["class_000"]
    x = store.sequence(0)
    assert x.shape == (4, 2, 18, 3)  # frames 7..10: frame 8 empty, frame 9 missing
    assert not x[1:3].any() and not x[:, 1].any()
    np.testing.assert_allclose(x[0, 0, 0], [0.5, 0.5, 0.9])
    np.testing.assert_allclose(x[3, 0, 1], [(320.0 + 0.01) / 640, 0.5, 0.9], rtol=1e-6)
    assert not x[0, 0, 5].any()


def test_openpose_bad_input(tmp_path):
    write_video(tmp_path / "src" / "v1", [[person((0.5, 0.5), joints=25)]])
    write_video(tmp_path / "src" / "v2", [[person((0.5, 0.5), joints=18)]])
    (tmp_path / "labels.csv").write_text("video,label\nv1,a\nv2,b\n")
    with pytest.raises(ValueError, match=r"v2_000000000000_keypoints.json: people\[0\] field "
                                         r"'pose_keypoints_2d' has 54 values, expected 75"):
        prepare("openpose", tmp_path / "src", tmp_path / "ds", labels=tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("video,label\nv1,a\nv3,b\n")
    with pytest.raises(ValueError, match=r"labels.csv: lists video 'v3', but .*v3 is not a folder"):
        prepare("openpose", tmp_path / "src", tmp_path / "ds", labels=tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("clip,label\nv1,a\n")
    with pytest.raises(ValueError, match=r"labels.csv: line 1 must be the header video,label"):
        prepare("openpose", tmp_path / "src", tmp_path / "ds", labels=tmp_path / "labels.csv")
    with pytest.raises(ValueError, match=r"src/v1: holds \*_keypoints.json files itself"):
        prepare("openpose", tmp_path / "src", tmp_path / "ds")
    with pytest.raises(ValueError, match=r"--coords pixel needs --image-size"):
        prepare("openpose", tmp_path / "src", tmp_path / "ds", coords="pixel")
    write_video(tmp_path / "mpi" / "v1", [[person((0.5, 0.5), joints=15)]])
    (tmp_path / "mpi.csv").write_text("video,label\nv1,a\n")
    with pytest.raises(ValueError, match=r"15 keypoints per person is not an OpenPose model"):
        prepare("openpose", tmp_path / "mpi", tmp_path / "ds", labels=tmp_path / "mpi.csv")
    assert not (tmp_path / "ds").exists()
