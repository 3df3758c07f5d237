"""A custom JSON layout from conversion to the manifest to every encoder (issue 15 item 9)."""
import json

import numpy as np
import pytest
import torch

from feeders.dataset import EvalDataset
from feeders.layouts import load_layout
from feeders.prepare import prepare
from feeders.store import open_store
from feeders.streams import to_stream
from models import build_encoder, list_encoders
from models.gcn_blocks import disentangled_scales

# A 7-joint 3D skeleton stored in an order no built-in layout has: the root (pelvis) is joint 3.
MINE = {"name": "stick7", "dims": 3,
        "joints": ["head", "l_hand", "r_hand", "pelvis", "chest", "l_foot", "r_foot"],
        "parents_1based": [5, 5, 5, 4, 4, 4, 4],
        "center": "pelvis", "graph_center": "chest",
        "mirror": [["l_hand", "r_hand"], ["l_foot", "r_foot"]]}
PARENTS = [4, 4, 4, 3, 3, 3, 3]  # 0-based, by hand


@pytest.fixture
def custom_store(tmp_path):
    """Three sequences (T, 7, 3) in the arrays format, converted with --layout mine.json; the
    JSON file is deleted afterwards (the manifest must carry the whole layout)."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for k, t in enumerate((9, 12, 10)):
        np.save(src / f"s{k}.npy", rng.normal(size=(t, 7, 3)).astype(np.float32))
    (src / "labels.csv").write_text("name,label,split\ns0,0,train\ns1,1,train\ns2,1,val\n")
    (tmp_path / "mine.json").write_text(json.dumps(MINE))
    declared = load_layout(tmp_path / "mine.json")
    prepare("arrays", src, tmp_path / "ds", layout=str(tmp_path / "mine.json"))
    (tmp_path / "mine.json").unlink()
    return open_store(tmp_path / "ds", verify=True), declared


def test_manifest_carries_the_declared_layout(custom_store):
    store, declared = custom_store
    assert store.layout == declared
    assert store.layout.parents == tuple(PARENTS) and store.layout.center == 3
    assert store.layout.mirror == (0, 2, 1, 3, 4, 6, 5) and store.layout.graph_center == 4
    assert store.manifest["layout"] == "stick7" and store.manifest["joints"] == 7
    assert store.manifest["layout_source"] == "declared"
    assert store.manifest["layout_spec"] == declared.to_json()


def test_dataset_centre_and_bones_use_the_declared_layout(custom_store):
    store, _ = custom_store
    dataset = EvalDataset(store, "train", clip_len=6)
    seq = dataset.read_sequence(0)  # (T, M, V, C), normalised
    # normalised on the declared centre: the pelvis (joint 3) of the first frame is the origin
    np.testing.assert_allclose(seq[0, 0, 3], 0.0, atol=1e-6)
    np.testing.assert_allclose(seq[0, 0, 0], store.sequence(0)[0, 0, 0] - store.sequence(0)[0, 0, 3],
                               rtol=1e-5)
    x = dataset[0][0][None]  # (1, C, L, V, M)
    b = to_stream(x, "b", store.layout.parents)
    for v, p in enumerate(PARENTS):
        torch.testing.assert_close(b[..., v, :], x[..., v, :] - x[..., p, :])
    assert not b[..., 3, :].any()  # the root has a zero bone


@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_runs_on_the_custom_layout(custom_store, name):
    store, _ = custom_store
    enc = build_encoder(name, "tiny", layout=store.layout, clip_len=8, channels=store.channels,
                        bodies=store.bodies)
    out = enc(torch.randn(2, 3, 8, 7, 1))
    assert out.joints.shape == (2, 7, enc.spatial_dim)
    graphs = [buf for key, buf in enc.named_buffers() if key.endswith(".A")]
    if name == "stgcn":  # every block convolves over the declared layout's partitions
        expected = torch.from_numpy(store.layout.partitions("spatial"))
        assert graphs and all(torch.equal(a, expected) for a in graphs)
    elif name == "msg3d":  # the MS-GCN scales come from the declared bone tree
        adjacency = torch.from_numpy(store.layout.adjacency())
        spatial = [a for a in graphs if a.shape[-1] == 7]
        assert spatial and all(torch.equal(a, disentangled_scales(adjacency, a.shape[0]))
                               for a in spatial)


def write_pyskl(path, joints, coords, score):
    """A two-annotation pyskl pickle with keypoint (1, 6, joints, coords)."""
    import pickle
    rng = np.random.default_rng(1)
    anns = []
    for k in range(2):
        ann = {"frame_dir": f"clip{k}", "label": k, "total_frames": 6,
               "keypoint": rng.normal(size=(1, 6, joints, coords)).astype(np.float16)}
        if score:
            ann["keypoint_score"] = rng.uniform(size=(1, 6, joints)).astype(np.float16)
        anns.append(ann)
    with open(path, "wb") as f:
        pickle.dump({"split": {"train": ["clip0"], "val": ["clip1"]}, "annotations": anns}, f)


def test_pyskl_no_silent_guess(tmp_path, capsys):
    # 25 joints in 2D + score: OpenPose BODY_25, never NTU's 3D ntu25 with the score as z
    write_pyskl(tmp_path / "op.pkl", 25, 2, score=True)
    prepare("pyskl", tmp_path / "op.pkl", tmp_path / "op")
    store = open_store(tmp_path / "op")
    assert (store.layout.name, store.layout.dims, store.channels) == ("body25", 2, 3)
    assert store.manifest["layout_source"] == "inferred"
    # a 20-joint 3D file is read as kinect20 only with a warning saying how to declare another
    write_pyskl(tmp_path / "k.pkl", 20, 3, score=False)
    prepare("pyskl", tmp_path / "k.pkl", tmp_path / "k")
    assert open_store(tmp_path / "k").layout.name == "kinect20"
    err = capsys.readouterr().err
    assert "k.pkl: no layout declared; 20 joints in 3D read as built-in layout kinect20" in err
    assert "pass --layout mine.json" in err
    # the same file with its own joint order declared
    mine = {"name": "kin20", "dims": 3, "joints": [f"j{v}" for v in range(20)],
            "parents": [0] + list(range(19)), "center": 0, "mirror": [[5, 9]]}
    (tmp_path / "mine.json").write_text(json.dumps(mine))
    prepare("pyskl", tmp_path / "k.pkl", tmp_path / "k2", layout=str(tmp_path / "mine.json"))
    store = open_store(tmp_path / "k2")
    assert store.layout.parents == tuple([0] + list(range(19)))
    assert store.manifest["layout_source"] == "declared"


def test_openpose_with_a_declared_layout(tmp_path):
    """An OpenPose model the reader does not know (MPI, 15 keypoints) with --layout FILE."""
    video = tmp_path / "src" / "v1"
    video.mkdir(parents=True)
    pose = np.full((15, 3), 0.5, np.float32)
    (video / "v1_000000000000_keypoints.json").write_text(
        json.dumps({"people": [{"pose_keypoints_2d": pose.reshape(-1).tolist()}]}))
    (tmp_path / "labels.csv").write_text("video,label\nv1,a\n")
    mpi = {"name": "mpi15", "dims": 2, "joints": [f"k{v}" for v in range(15)],
           "parents": [1, 1] + [1] * 13, "center": 1}
    (tmp_path / "mpi.json").write_text(json.dumps(mpi))
    prepare("openpose", tmp_path / "src", tmp_path / "ds", labels=tmp_path / "labels.csv",
            layout=str(tmp_path / "mpi.json"))
    store = open_store(tmp_path / "ds")
    assert store.layout.name == "mpi15" and store.manifest["layout_source"] == "declared"
    assert store.sequence(0).shape == (1, 2, 15, 3)
