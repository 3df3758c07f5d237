import json

import numpy as np
import pytest

from feeders.layouts import NTU25
from feeders.store import open_store
from feeders.synthetic import (CLASS_NAMES, MAX_LEN, MIN_LEN, TWO_PERSON, generate_sequence, main,
                               subject_table, write_synthetic)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(write_synthetic(tmp_path_factory.mktemp("syn") / "demo", num_sequences=240,
                                      seed=0, workers=1))


def test_deterministic_for_a_seed():
    subjects = subject_table(0)
    a, b = generate_sequence(0, 17, subjects), generate_sequence(0, 17, subjects)
    assert a.name == b.name and np.array_equal(a.data, b.data)
    c = generate_sequence(1, 17, subject_table(1))
    assert a.data.shape != c.data.shape or not np.allclose(a.data, c.data)


def test_parallel_writer_matches_serial(tmp_path):
    one = open_store(write_synthetic(tmp_path / "one", num_sequences=40, seed=3, workers=1, block=8))
    two = open_store(write_synthetic(tmp_path / "two", num_sequences=40, seed=3, workers=2, block=8))
    assert list(one.names) == list(two.names)
    assert all(np.array_equal(one.sequence(i), two.sequence(i)) for i in range(40))


def test_manifest_and_shapes(store):
    assert store.layout.name == "ntu25"
    assert (store.channels, store.joints, store.bodies) == (3, 25, 2)
    assert store.num_classes == len(CLASS_NAMES) >= 10
    assert MIN_LEN <= store.lengths.min() and store.lengths.max() <= MAX_LEN
    assert store.lengths.min() < 70 and store.lengths.max() > 120  # lengths really vary
    manifest = json.loads((store.root / "manifest.json").read_text())
    assert manifest["class_names"] == list(CLASS_NAMES)
    assert manifest["source_format"] == "synthetic"


def test_bodies_classes_and_cross_subject_split(store):
    second_body = np.array([np.abs(store.sequence(i)[:, 1]).sum() > 0 for i in range(len(store))])
    two_person = np.isin(store.labels, sorted(TWO_PERSON))
    assert second_body[two_person].all()          # two-person classes have a partner
    assert second_body[~two_person].any()         # bystanders appear sometimes
    assert (~second_body[~two_person]).any()      # and single-person sequences exist
    train, val = store.split_indices("xsub_train"), store.split_indices("xsub_val")
    assert len(train) + len(val) == len(store)
    assert not set(store.subjects[train]) & set(store.subjects[val])
    for split in (train, val):
        assert set(store.labels[split]) == set(range(store.num_classes))


def test_bone_lengths_are_constant_within_a_sequence(store):
    """A kinematic model keeps bone lengths: their spread over time is at the level of the
    sensor noise (sigma <= 0.02 m per coordinate, 0.04 m on hands), far below the motion."""
    child = np.array([c for c, _ in NTU25.edges()])
    parent = np.array([p for _, p in NTU25.edges()])
    for i in range(0, len(store), 37):
        body = store.sequence(i)[:, 0]                        # (T, V, C)
        lengths = np.linalg.norm(body[:, child] - body[:, parent], axis=-1)  # (T, bones)
        valid = (np.abs(body[:, child]).sum(-1) > 0) & (np.abs(body[:, parent]).sum(-1) > 0)
        med = np.median(np.where(valid, lengths, np.nan), axis=0)
        dev = np.abs(lengths - med)[valid]
        assert np.median(dev) < 0.04, f"sequence {i}: bone lengths drift"
        motion = np.ptp(body[:, child], axis=0).max()           # largest joint excursion
        assert motion > 5 * np.median(dev)


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--num-sequences", "12", "--workers", "1"])
    assert "wrote 12 sequences" in capsys.readouterr().out
    assert len(open_store(tmp_path / "cli")) == 12
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), "--num-sequences", "0"])
