"""Round trip, atomicity and corruption detection of the internal dataset format."""

import json

import numpy as np
import pytest

from feeders.store import Record, Store, StoreError, StoreWriter, add_splits, open_store

CLASSES = ["a", "b", "c"]


def random_records(n=6, seed=0, bodies=2, joints=25, channels=3):
    rng = np.random.default_rng(seed)
    return [Record(name=f"seq{i}", label=i % len(CLASSES),
                   data=rng.normal(size=(int(rng.integers(1, 12)), bodies, joints, channels))
                   .astype(np.float32),
                   subject=i + 1, view=i % 3, setup=7, replication=-1)
            for i in range(n)]


def write(out, records, splits=None, dtype="float32"):
    with StoreWriter(out, "ntu25", len(CLASSES), CLASSES, channels=3, bodies=2, dtype=dtype,
                     source_format="test") as w:
        for rec in records:
            w.add(rec)
        w.close(splits if splits is not None else {"train": [0, 2, 4], "val": ["seq1", "seq3"]})
    return out


@pytest.fixture
def dataset(tmp_path):
    records = random_records()
    return write(tmp_path / "ds", records), records


def test_round_trip(dataset):
    path, records = dataset
    store = open_store(path, verify=True)
    assert isinstance(store, Store) and len(store) == len(records)
    assert store.layout.name == "ntu25"
    assert (store.channels, store.joints, store.bodies, store.num_classes) == (3, 25, 2, 3)
    for i, rec in enumerate(records):
        seq = store.sequence(i)
        assert isinstance(seq, np.memmap)  # a view into the memmap, not a copy
        np.testing.assert_array_equal(seq, rec.data)
    assert store.labels.tolist() == [r.label for r in records]
    assert store.names.tolist() == [r.name for r in records]
    assert store.lengths.tolist() == [len(r.data) for r in records]
    assert store.subjects.tolist() == [r.subject for r in records]
    assert store.replications.tolist() == [-1] * len(records)
    assert store.split_indices("train").tolist() == [0, 2, 4]
    assert store.split_indices("val").tolist() == [1, 3]  # names resolved to indices
    m = store.manifest
    assert m["total_frames"] == sum(len(r.data) for r in records)
    assert m["splits"] == {"train": 3, "val": 2}
    assert m["class_names"] == CLASSES and m["source_format"] == "test"
    with pytest.raises(KeyError, match="available splits: \\['train', 'val'\\]"):
        store.split_indices("xsub_train")


def test_float16_and_frame_arrays(tmp_path):
    records = [r._replace(frame_arrays={"frame_labels": np.arange(len(r.data)) + 10 * i})
               for i, r in enumerate(random_records(4))]
    store = open_store(write(tmp_path / "ds", records, {}, dtype="float16"), verify=True)
    assert store.frames.dtype == np.float16
    assert store.frame_array_names == ["frame_labels"]
    for i, rec in enumerate(records):
        np.testing.assert_array_equal(store.sequence(i), rec.data.astype(np.float16))
        np.testing.assert_array_equal(store.frame_array("frame_labels", i),
                                      np.arange(len(rec.data)) + 10 * i)


def test_failure_mid_write_leaves_nothing(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with StoreWriter(out, "ntu25", 3, CLASSES, 3, 2) as w:
            w.add(random_records(1)[0])
            raise RuntimeError("reader crashed")
    assert list(tmp_path.iterdir()) == []


def test_failure_does_not_clobber_existing(dataset):
    path, records = dataset
    before = (path / "manifest.json").read_text()
    with pytest.raises(ValueError, match="label 7"):
        with StoreWriter(path, "ntu25", 3, CLASSES, 3, 2) as w:
            w.add(records[0])
            w.add(records[1]._replace(label=7))
    assert (path / "manifest.json").read_text() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["ds"]
    open_store(path, verify=True)


def test_rewrite_replaces_existing(dataset):
    path, records = dataset
    write(path, records[:2], {})
    assert len(open_store(path, verify=True)) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["ds"]


@pytest.mark.parametrize("bad, message", [
    (lambda r: r._replace(data=r.data[:, :, :20]), "expected \\(T>=1, 2, 25, 3\\)"),
    (lambda r: r._replace(data=np.where(np.arange(3) == 1, np.nan, r.data)), "NaN"),
    (lambda r: r._replace(label=-1), "label -1 outside \\[0, 3\\)"),
])
def test_add_rejects_bad_records(tmp_path, bad, message):
    with StoreWriter(tmp_path / "ds", "ntu25", 3, CLASSES, 3, 2) as w:
        with pytest.raises(ValueError, match=f"record 'seq0'.*{message}"):
            w.add(bad(random_records(1)[0]))


def test_close_rejects_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split 'val': indices \\[9\\]"):
        write(tmp_path / "ds", random_records(3), {"val": [0, 9]})
    with pytest.raises(ValueError, match="split 'val': unknown sequence names \\['nope'\\]"):
        write(tmp_path / "ds", random_records(3), {"val": ["seq0", "nope"]})
    assert not (tmp_path / "ds").exists()


def rewrite_index(path, **changes):
    with np.load(path / "index.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path / "index.npz", **arrays)


def edit_manifest(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_truncated_frames(dataset):
    path, _ = dataset
    size = (path / "frames.npy").stat().st_size
    with open(path / "frames.npy", "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(StoreError, match="frames.npy: truncated"):
        open_store(path)


def test_manifest_missing_field(dataset):
    path, _ = dataset
    edit_manifest(path, lambda m: m.pop("num_classes"))
    with pytest.raises(StoreError, match="manifest.json: field 'num_classes' missing"):
        open_store(path)


def test_manifest_missing_or_unparseable(dataset):
    path, _ = dataset
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json: not valid JSON"):
        open_store(path)
    (path / "manifest.json").unlink()
    with pytest.raises(StoreError, match="manifest.json: missing"):
        open_store(path)


def test_manifest_layout_mismatch(dataset):
    path, _ = dataset
    edit_manifest(path, lambda m: m.update(layout="kinect20"))
    with pytest.raises(StoreError, match="field 'layout' is 'kinect20', but 'layout_spec' "
                                         "describes layout 'ntu25'"):
        open_store(path)
    edit_manifest(path, lambda m: (m.update(layout="ntu25"),
                                   m["layout_spec"].update(parents=list(range(25)))))
    with pytest.raises(StoreError, match=r"manifest.json: field 'layout_spec': field 'parents' "
                                         r"has 25 roots"):
        open_store(path)
    # manifests written before layout_spec existed name a built-in layout
    edit_manifest(path, lambda m: (m.update(layout="kinect20"), m.pop("layout_spec")))
    with pytest.raises(StoreError, match="joints=25 but layout 'kinect20' has 20"):
        open_store(path)
    edit_manifest(path, lambda m: m.update(layout="nope"))
    with pytest.raises(StoreError, match="unknown layout 'nope'"):
        open_store(path)


def test_frames_shape_mismatch(dataset):
    path, _ = dataset
    edit_manifest(path, lambda m: m.update(channels=2))
    with pytest.raises(StoreError, match="frames.npy: shape .* does not match the manifest"):
        open_store(path)


def test_labels_out_of_range(dataset):
    path, records = dataset
    rewrite_index(path, label=np.array([0, 1, 2, 3, 0, 1], dtype=np.int32))
    with pytest.raises(StoreError, match="index.npz: label 3 of sequence 3 outside \\[0, 3\\)"):
        open_store(path)


def test_bad_split_index(dataset):
    path, _ = dataset
    rewrite_index(path, **{"split/train": np.array([0, 6, 2])})
    with pytest.raises(StoreError, match="index.npz: split 'train' has indices \\[6\\]"):
        open_store(path)


def test_offsets_out_of_bounds(dataset):
    path, records = dataset
    lengths = np.array([len(r.data) for r in records], dtype=np.int32)
    lengths[-1] += 5
    rewrite_index(path, length=lengths)
    with pytest.raises(StoreError, match="index.npz: lengths sum to"):
        open_store(path)
    lengths[-1] -= 5
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    offsets[2] += 1
    rewrite_index(path, length=lengths, offset=offsets)
    with pytest.raises(StoreError, match="index.npz: offset of sequence 2 .* contiguous"):
        open_store(path)


def test_checksum_mismatch_with_verify(dataset):
    path, _ = dataset
    with open(path / "frames.npy", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    open_store(path)  # structure still valid: only verify=True reads every byte
    with pytest.raises(StoreError, match="frames.npy: sha256 checksum mismatch"):
        open_store(path, verify=True)


def test_missing_directory(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nothing")


def test_add_splits_shares_frames_and_keeps_everything_else(dataset, tmp_path):
    path, records = dataset
    out = add_splits(path, tmp_path / "more", {"view0": [0, 3], "view1": [1, 4]})
    store = open_store(out, verify=True)
    assert store.split_indices("view0").tolist() == [0, 3]
    assert store.split_indices("view1").tolist() == [1, 4]
    assert store.split_indices("train").tolist() == [0, 2, 4]  # the old splits stay
    assert store.manifest["splits"] == {"train": 3, "val": 2, "view0": 2, "view1": 2}
    assert (out / "frames.npy").stat().st_ino == (path / "frames.npy").stat().st_ino  # a link
    for i, rec in enumerate(records):
        np.testing.assert_array_equal(store.sequence(i), rec.data)
    assert store.views.tolist() == open_store(path).views.tolist()
    assert open_store(path).manifest["splits"] == {"train": 3, "val": 2}  # src untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "more"]  # no temporary left


@pytest.mark.parametrize("splits, message", [
    ({"train": [0]}, "split 'train' exists already"),
    ({"new": [0, 6]}, r"split 'new': expected 1 or more sequence indices in \[0, 6\)"),
    ({"new": []}, "got 0 indices"),
])
def test_add_splits_rejects_bad_splits(dataset, tmp_path, splits, message):
    path, _ = dataset
    with pytest.raises(ValueError, match=message):
        add_splits(path, tmp_path / "more", splits)
    assert not (tmp_path / "more").exists()
