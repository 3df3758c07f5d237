import pickle

import numpy as np
import pytest
import torch

from feeders.augment import resize_whole, temporal_crop_resize
from feeders.dataset import (
    EvalDataset,
    PretrainDataset,
    loader_options,
    make_loader,
    make_sampler,
    normalize_first_frame,
    normalize_view,
    worker_init_fn,
)
from feeders.layouts import get_layout
from feeders.store import Record, StoreWriter, open_store

LENGTHS = [1, 5, 30, 80, 120, 64, 17, 40, 9, 100]
CLIP = 16
CENTER = get_layout("ntu25").center


def make_sequence(i, length):
    rng = np.random.default_rng(i)
    data = rng.normal(size=(length, 2, 25, 3)).astype(np.float32) + 5.0
    if i % 2:
        data[:, 1] = 0  # single-person sequence: body 2 absent
    if i == 4:
        data[:3, 1] = 0  # body 2 enters at frame 3
    return data


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "store"
    with StoreWriter(out, "ntu25", 3, ["a", "b", "c"], channels=3, bodies=2) as w:
        for i, n in enumerate(LENGTHS):
            w.add(Record(f"seq{i}", i % 3, make_sequence(i, n)))
        # "probe" is unsorted and shares seq1 with "train" (not a train/val pair, which the
        # writer would refuse as leakage)
        w.close({"train": [0, 1, 2, 3, 4, 5, 6], "probe": [7, 8, 9, 1]})
    return out


@pytest.fixture(scope="module")
def store(store_dir):
    return open_store(store_dir)


def normalized(i):
    seq = make_sequence(i, LENGTHS[i])
    return seq - seq[0, 0, CENTER] * (seq != 0).any(axis=(2, 3))[:, :, None, None]


# ----------------------------------------------------------------------------- normalisation


def test_normalize_hand_example():
    seq = np.zeros((3, 2, 2, 3), np.float32)  # (T, M, V, C) with center joint 1
    seq[1:, 0] = [[1, 1, 1], [2, 3, 4]]  # body 1 appears at frame 1
    seq[2, 1] = [[10, 10, 10], [0, 0, 0]]  # body 2 only in frame 2
    out = normalize_first_frame(seq.copy(), center=1, spatial_channels=3)
    assert np.array_equal(out[0], np.zeros((2, 2, 3)))  # absent frame stays zero
    assert np.array_equal(out[1, 0], [[-1, -2, -3], [0, 0, 0]])
    assert np.array_equal(out[2, 1], [[8, 7, 6], [-2, -3, -4]])
    assert np.array_equal(out[1, 1], np.zeros((2, 3)))  # body 2 absent in frame 1


def test_normalize_keeps_confidence_channel():
    seq = np.ones((2, 1, 3, 3), np.float32)
    seq[..., 0] = np.arange(3)
    seq[..., 2] = 0.5
    out = normalize_first_frame(seq.copy(), center=2, spatial_channels=2)
    assert np.array_equal(out[..., 0], np.broadcast_to(np.arange(3) - 2.0, (2, 1, 3)))
    assert np.array_equal(out[..., 1], np.zeros((2, 1, 3)))
    assert np.array_equal(out[..., 2], np.full((2, 1, 3), 0.5))


def test_dataset_normalisation_and_none(store):
    ds = EvalDataset(store, None, CLIP)
    clip, _, _ = ds[4]
    assert np.allclose(clip.numpy(), resize_whole(normalized(4), CLIP), atol=1e-6)
    seq = ds.read_sequence(4)
    assert np.count_nonzero(seq[:3, 1]) == 0 and np.count_nonzero(seq[3:, 1]) > 0  # body 2 enters
    raw = EvalDataset(store, None, CLIP, normalize="none")[3][0]
    assert np.array_equal(raw.numpy(), resize_whole(make_sequence(3, 80), CLIP))
    assert np.array_equal(ds[3][0][:, :, :, 1], torch.zeros(3, CLIP, 25))  # absent body


def yaw(deg):
    """Rotation by `deg` degrees about the vertical (y) axis, as a (3, 3) matrix."""
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])


def test_normalize_view_undoes_a_camera_turn():
    # joints: 0 centre, 1 left hip, 2 right hip, 3 left shoulder, 4 right shoulder; facing +z
    body = np.array([[0, 0, 0], [0.1, -0.3, 0], [-0.1, -0.3, 0], [0.2, 0.2, 0.05],
                     [-0.2, 0.2, 0.05]])
    canonical = np.zeros((3, 2, 5, 3))
    canonical[1, 0] = body
    canonical[2, 0] = body + [0.5, 0.1, 0.2]  # steps to the side and back
    canonical[2, 1] = body + [1.0, 0, 0]      # a second body, only in frame 2
    for deg in (0, 35, 90, 180, -120):
        present = (canonical != 0).any(axis=(2, 3))[:, :, None, None]
        seen = canonical @ yaw(deg).T + [3.0, 1.0, 2.0] * present
        out = normalize_view(seen.astype(np.float32), center=0, joints=(1, 2, 3, 4))
        assert np.allclose(out, canonical, atol=1e-5), deg
        assert not out[0].any() and not out[1, 1].any()  # absent frame and body stay zero
    # by hand, 90 degrees: d = (lh - rh) + (ls - rs) = (0, 0, 0.6) -> turned onto +x
    seq = np.zeros((1, 1, 5, 3), np.float32)
    seq[0, 0, 1:] = [[0, 0, 0.1], [0, 0, -0.1], [0, 1, 0.2], [0, 1, -0.2]]
    out = normalize_view(seq, center=0, joints=(1, 2, 3, 4))
    assert np.allclose(out[0, 0, 1:], [[0.1, 0, 0], [-0.1, 0, 0], [0.2, 1, 0], [-0.2, 1, 0]])
    # no horizontal left-right direction: only centred
    flat = np.zeros((1, 1, 5, 3), np.float32)
    flat[0, 0] = [[1, 1, 1], [1, 2, 1], [1, 0, 1], [1, 3, 1], [1, 4, 1]]
    out = normalize_view(flat.copy(), center=0, joints=(1, 2, 3, 4))
    assert np.array_equal(out, flat - [1, 1, 1])


def test_view_normalisation_in_the_dataset(store, tmp_path):
    ds = EvalDataset(store, None, CLIP, normalize="view")
    seq = ds.read_sequence(4)
    layout = get_layout("ntu25")
    lh, rh, ls, rs = (layout.joints.index(n) for n in
                      ("left_hip", "right_hip", "left_shoulder", "right_shoulder"))
    d = seq[0, 0, lh] - seq[0, 0, rh] + seq[0, 0, ls] - seq[0, 0, rs]
    assert d[0] > 0 and abs(d[2]) < 1e-5
    first = ds.read_sequence(4)  # the same as first_frame up to a turn about y
    centred = EvalDataset(store, None, CLIP).read_sequence(4)
    assert np.allclose(first[..., 1], centred[..., 1])
    assert np.allclose(np.hypot(first[..., 0], first[..., 2]), np.hypot(centred[..., 0], centred[..., 2]),
                       atol=1e-5)
    assert not seq[:3, 1].any()  # body 2 still absent before it enters
    with StoreWriter(tmp_path / "coco", "coco17", 2, ["a", "b"], channels=3, bodies=1) as w:
        w.add(Record("s0", 0, np.ones((4, 1, 17, 3), np.float32)))
        w.close({"train": [0]})
    with pytest.raises(ValueError, match=r"coco.*normalize='view'.*coco17 has 2D.*use 'first_frame'"):
        EvalDataset(tmp_path / "coco", None, CLIP, normalize="view")


# ----------------------------------------------------------------------------- items


def test_pretrain_items_shapes_and_golden_crops(store_dir):
    ds = PretrainDataset(store_dir, "train", CLIP, seed=7)
    assert len(ds) == 7
    views, index = ds[3]
    assert views.shape == (4, 3, CLIP, 25, 2) and views.dtype == torch.float32 and index == 3
    for k in range(4):
        expected = temporal_crop_resize(normalized(3), CLIP, np.random.default_rng([7, 0, 3, k]))
        assert np.allclose(views[k].numpy(), expected, atol=1e-6)
    assert not torch.equal(views[0], views[1])


def test_pretrain_epochs_and_determinism(store):
    ds = PretrainDataset(store, "train", CLIP, seed=1, num_views=2)
    a = ds[4][0]
    assert torch.equal(a, ds[4][0])
    ds.set_epoch(1)
    b = ds[4][0]
    assert not torch.equal(a, b)
    ds.set_epoch(0)
    assert torch.equal(a, ds[4][0])
    other_seed = PretrainDataset(store, "train", CLIP, seed=2, num_views=2)
    assert not torch.equal(a, other_seed[4][0])


def test_pretrain_min_crop_reaches_the_crops(store):
    """Sequence 1 has 5 frames: never cropped by default (crop >= L = 16), cropped to 4 frames
    with min_crop=4 (floor(5 s) <= 4 for s < 1)."""
    ds = PretrainDataset(store, "train", CLIP, seed=7, num_views=2, min_crop=4)
    views, _ = ds[1]
    for k in range(2):
        expected = temporal_crop_resize(normalized(1), CLIP, np.random.default_rng([7, 0, 1, k]),
                                        min_crop=4)
        assert np.allclose(views[k].numpy(), expected, atol=1e-6)
        assert not np.allclose(expected, resize_whole(normalized(1), CLIP))
    default = PretrainDataset(store, "train", CLIP, seed=7, num_views=2)[1][0]
    assert np.allclose(default[0].numpy(), resize_whole(normalized(1), CLIP), atol=1e-6)
    with pytest.raises(ValueError, match="min_crop must be >= 1 frame"):
        PretrainDataset(store, "train", CLIP, seed=7, min_crop=0)


def test_eval_items_have_no_randomness(store):
    ds = EvalDataset(store, "probe", CLIP)
    assert len(ds) == 4 and ds.labels.tolist() == [7 % 3, 8 % 3, 9 % 3, 1 % 3]
    clip, label, index = ds[1]
    assert clip.shape == (3, CLIP, 25, 2) and label == 8 % 3 and index == 1
    assert torch.equal(clip, EvalDataset(store, "probe", CLIP)[1][0])
    assert np.allclose(clip.numpy(), resize_whole(normalized(8), CLIP), atol=1e-6)


def test_one_frame_sequence_survives(store):
    views, _ = PretrainDataset(store, "train", CLIP, seed=0)[0]
    frame = torch.from_numpy(normalized(0)[0].transpose(2, 1, 0))  # (C, V, M)
    assert torch.equal(views, frame[None, :, None].expand(4, 3, CLIP, 25, 2))
    clip = EvalDataset(store, "train", CLIP)[0][0]
    assert torch.equal(clip, frame[:, None].expand(3, CLIP, 25, 2))


def test_indices_subset(store):
    ds = EvalDataset(store, "train", CLIP, indices=[5, 2])
    assert len(ds) == 2 and ds[0][2] == 5 and ds[1][2] == 2
    assert torch.equal(ds[1][0], EvalDataset(store, "train", CLIP)[2][0])
    with pytest.raises(ValueError, match="outside split 'train'"):
        EvalDataset(store, "train", CLIP, indices=[7])


def test_float16_store(tmp_path):
    out = tmp_path / "f16"
    with StoreWriter(out, "ntu25", 1, ["a"], channels=3, bodies=2, dtype="float16") as w:
        w.add(Record("s", 0, make_sequence(3, 20)))
        w.close({"all": [0]})
    clip = EvalDataset(out, "all", 8, normalize="none")[0][0]
    expected = resize_whole(make_sequence(3, 20).astype(np.float16), 8)
    assert clip.dtype == torch.float32 and np.array_equal(clip.numpy(), expected)


def test_pickled_dataset_carries_no_frames(store):
    ds = PretrainDataset(store, "train", CLIP, seed=3)
    first = ds[2][0]
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # the frames (about 80 kB here) are not in it
    assert torch.equal(pickle.loads(blob)[2][0], first)


def test_bad_arguments(store):
    with pytest.raises(KeyError, match="available splits"):
        EvalDataset(store, "nope", CLIP)
    with pytest.raises(ValueError, match="normalize"):
        EvalDataset(store, "probe", CLIP, normalize="center")
    with pytest.raises(ValueError, match="seed"):
        PretrainDataset(store, "probe", CLIP, seed=-1)


# ----------------------------------------------------------------------------- loader


def batches(loader):
    return [(v.clone(), i.clone()) for v, i in loader]


def test_loader_same_items_for_any_worker_count(store):
    ds = PretrainDataset(store, None, CLIP, seed=4, num_views=2)
    serial = batches(make_loader(ds, 3, shuffle=True, seed=4, epoch=2, workers=0))
    parallel_loader = make_loader(ds, 3, shuffle=True, seed=4, epoch=2, workers=2)
    assert parallel_loader.multiprocessing_context.get_start_method() == "forkserver"
    parallel = batches(parallel_loader)   # the dataset reaches the forkserver's workers pickled
    assert len(serial) == len(parallel) == 4
    for (va, ia), (vb, ib) in zip(serial, parallel):
        assert torch.equal(ia, ib) and torch.equal(va, vb)
    order = torch.cat([i for _, i in serial]).tolist()
    assert sorted(order) == list(range(10)) and order != list(range(10))
    next_epoch = batches(make_loader(ds, 3, shuffle=True, seed=4, epoch=3, workers=0))
    assert torch.cat([i for _, i in next_epoch]).tolist() != order
    assert ds.epoch == 3


def test_loader_options_start_cpu_workers_from_a_forkserver():
    """On the CPU a worker forked from the trainer would share its heap copy-on-write (every
    page a step writes copied by the kernel first): CPU workers come from a forkserver. With
    CUDA the default fork is kept and batches are pinned; no workers, no worker settings."""
    cpu = loader_options(2, torch.device("cpu"))
    assert cpu == {"num_workers": 2, "pin_memory": False, "worker_init_fn": worker_init_fn,
                   "multiprocessing_context": "forkserver"}
    assert loader_options(2, "cuda:1") == {"num_workers": 2, "pin_memory": True,
                                           "worker_init_fn": worker_init_fn}
    assert loader_options(0, "cpu") == {"num_workers": 0, "pin_memory": False}
    assert loader_options(0, "cuda") == {"num_workers": 0, "pin_memory": True}


def test_sampler_shards_cover_the_epoch(store):
    ds = EvalDataset(store, None, CLIP)
    shards = [list(make_sampler(ds, True, 0, 5, drop_last=False, num_replicas=3, rank=r))
              for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert set(sum(shards, [])) == set(range(10))
    assert shards == [list(make_sampler(ds, True, 0, 5, False, 3, r)) for r in range(3)]


def test_loader_does_not_touch_global_rng(store):
    ds = EvalDataset(store, None, CLIP)
    state = torch.get_rng_state()
    batches_ = list(make_loader(ds, 4, shuffle=True, seed=0, workers=0))
    assert len(batches_) == 3 and torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="torch.distributed"):
        make_loader(ds, 4, shuffle=True, seed=0, distributed=True)


def test_2d_score_layout_keeps_the_score_channel(tmp_path):
    """coco17 (x, y, score): the dataset resolves 2 coordinate channels from the layout."""
    seq = np.random.default_rng(0).uniform(0.1, 1.0, size=(6, 1, 17, 3)).astype(np.float32)
    with StoreWriter(tmp_path / "coco", "coco17", 2, ["a", "b"], channels=3, bodies=1) as w:
        w.add(Record("s0", 0, seq))
        w.close({"train": [0]})
    ds = EvalDataset(tmp_path / "coco", "train", clip_len=6)
    assert ds.spatial_channels == 2
    clip, _, _ = ds[0]  # (C, L, V, M)
    np.testing.assert_allclose(clip[2].numpy(), seq[..., 2].transpose(0, 2, 1), rtol=1e-6)
    centre = get_layout("coco17").center
    np.testing.assert_allclose(clip[:2, 0, centre, 0].numpy(), 0.0, atol=1e-6)
