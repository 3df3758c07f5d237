"""The synthetic default dataset: determinism, shapes, splits, kinematic consistency, store."""
import json

import numpy as np
import pytest

from feeders import synthetic as S
from feeders.layouts import get_layout
from feeders.store import open_store

N = 288  # 24 sequences per class; subjects 1..24 each appear 12 times


@pytest.fixture(scope="module")
def sequences():
    subjects = S.subject_table(0)
    return [S.generate_sequence(0, i, subjects) for i in range(N)]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "ds"
    S.write_synthetic(out, num_sequences=N, seed=0, workers=1)
    return out


def test_same_seed_same_arrays_other_seed_differs():
    a = S.generate_sequence(3, 17, S.subject_table(3))
    b = S.generate_sequence(3, 17, S.subject_table(3))
    c = S.generate_sequence(4, 17, S.subject_table(4))
    assert a.name == b.name and a.label == b.label and a.subject == b.subject
    np.testing.assert_array_equal(a.data, b.data)
    assert a.data.shape != c.data.shape or not np.array_equal(a.data, c.data)


def test_sequence_depends_only_on_its_index():
    subjects = S.subject_table(0)
    alone = S.generate_sequence(0, 40, subjects)
    for i in range(40):                  # generating others first must not change sequence 40
        S.generate_sequence(0, i, subjects)
    np.testing.assert_array_equal(S.generate_sequence(0, 40, subjects).data, alone.data)


def test_shapes_lengths_and_body_counts(sequences):
    lengths = [s.data.shape[0] for s in sequences]
    assert min(lengths) >= S.MIN_LEN and max(lengths) <= S.MAX_LEN
    assert max(lengths) - min(lengths) > 50  # lengths really vary
    for s in sequences:
        assert s.data.shape[1:] == (2, 25, 3) and s.data.dtype == np.float32
        assert np.isfinite(s.data).all()
        assert np.any(s.data[:, 0] != 0)
    two = [bool(np.any(s.data[:, 1] != 0)) for s in sequences]
    assert any(two) and not all(two)
    for s, has_two in zip(sequences, two):
        if s.label in S.TWO_PERSON:
            assert has_two, s.name
    bystanders = sum(h for s, h in zip(sequences, two) if s.label not in S.TWO_PERSON)
    assert 0 < bystanders < 0.5 * sum(s.label not in S.TWO_PERSON for s in sequences)


def test_forward_kinematics_keeps_bone_lengths_exactly():
    rng = np.random.default_rng(0)
    offsets = S.random_subject(rng).offsets
    angles = rng.uniform(-np.pi, np.pi, (7, 25, 3))
    pos = S.forward_kinematics(offsets, angles)
    for child, parent in enumerate(S.PARENTS):
        length = np.linalg.norm(pos[:, child] - pos[:, parent], axis=-1)
        np.testing.assert_allclose(length, np.linalg.norm(offsets[child]), atol=1e-12)
    # zero angles give the rest pose: head straight above the spine base, left hand at +x
    rest = S.forward_kinematics(offsets, np.zeros((1, 25, 3)))[0]
    assert rest[S.HEAD, 1] > rest[S.SPINE_MID, 1] > 0
    assert rest[S.L_HAND, 0] > 0 > rest[S.R_HAND, 0]


def test_bone_lengths_constant_over_time_up_to_noise(sequences):
    """Along the ntu25 layout edges, a bone's length varies only by the sensor jitter."""
    edges = get_layout("ntu25").edges()
    for s in sequences[:48]:
        body = s.data[:, 0].astype(np.float64)                     # (T, V, 3)
        seen = np.all(body != 0, axis=-1)                           # dropped joints are zero
        for child, parent in edges:
            ok = seen[:, child] & seen[:, parent]
            length = np.linalg.norm(body[ok, child] - body[ok, parent], axis=-1)
            # jitter is at most 4 cm per coordinate (hands); a moving bone of a non-rigid
            # model would vary by decimetres
            assert length.std() < 0.05, (s.name, child, parent, length.std())


def test_actions_move_the_body(sequences):
    """The actor's pose really changes (joint spread over time well above the jitter)."""
    for s in sequences[:24]:
        body = s.data[:, 0] - s.data[:, 0, 1:2]                     # relative to spine mid
        assert body.std(axis=0).max() > 0.08, s.name


def test_classes_subjects_and_split(store_dir):
    store = open_store(store_dir, verify=True)
    train, val = store.split_indices("xsub_train"), store.split_indices("xsub_val")
    assert len(train) + len(val) == N == len(store)
    assert set(train.tolist()).isdisjoint(val.tolist())
    subj_train, subj_val = set(store.subjects[train]), set(store.subjects[val])
    assert subj_train and subj_val and subj_train.isdisjoint(subj_val)
    assert all(s % 2 == 1 for s in subj_train) and all(s % 2 == 0 for s in subj_val)
    for split in (train, val):
        assert set(store.labels[split].tolist()) == set(range(len(S.CLASS_NAMES)))
    assert set(store.views.tolist()) == {1, 2, 3}


def test_store_matches_generator_and_manifest(store_dir, sequences):
    store = open_store(store_dir)
    for i in (0, 1, 137, N - 1):
        np.testing.assert_array_equal(store.sequence(i), sequences[i].data)
        assert store.names[i] == sequences[i].name and store.labels[i] == sequences[i].label
    manifest = json.loads((store_dir / "manifest.json").read_text())
    assert manifest["layout"] == "ntu25" and manifest["source_format"] == "synthetic"
    assert manifest["class_names"] == list(S.CLASS_NAMES)
    assert manifest["num_classes"] == len(S.CLASS_NAMES) >= 10
    assert (manifest["channels"], manifest["joints"], manifest["bodies"]) == (3, 25, 2)
    assert manifest["num_sequences"] == N
    assert manifest["splits"] == {"xsub_train": int(np.sum(store.subjects % 2 == 1)),
                                  "xsub_val": int(np.sum(store.subjects % 2 == 0))}


def test_parallel_workers_write_the_same_dataset(tmp_path, store_dir):
    out = S.write_synthetic(tmp_path / "par", num_sequences=N, seed=0, workers=2, block=50)
    a, b = open_store(out), open_store(store_dir)
    np.testing.assert_array_equal(np.asarray(a.frames), np.asarray(b.frames))
    np.testing.assert_array_equal(a.split_indices("xsub_val"), b.split_indices("xsub_val"))


def test_cli_and_bad_arguments(tmp_path, capsys):
    S.main(["--out", str(tmp_path / "cli"), "--num-sequences", "30", "--seed", "5",
            "--workers", "1"])
    assert "wrote 30 sequences" in capsys.readouterr().out
    assert len(open_store(tmp_path / "cli")) == 30
    with pytest.raises(SystemExit):
        S.main(["--out", str(tmp_path / "bad"), "--num-sequences", "0"])
    with pytest.raises(ValueError, match="num_subjects"):
        S.write_synthetic(tmp_path / "bad2", num_sequences=5, num_subjects=2)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()
