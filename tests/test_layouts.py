import numpy as np
import pytest

from feeders.layouts import LAYOUTS, NTU25, STRATEGIES, Layout, get_layout, normalize_digraph

# A 4-joint toy tree: 0 is the root/centre, 1 hangs on 0, 2 and 3 hang on 1 and mirror each other.
TOY = Layout("toy", ("a", "b", "c", "d"), (0, 0, 1, 1), center=0, graph_center=0, mirror=(0, 1, 3, 2))


def test_ntu_bones_match_method_pairs():
    pairs = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
             (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17),
             (19, 18), (20, 19), (21, 21), (22, 23), (23, 8), (24, 25), (25, 12)]
    assert NTU25.parents == tuple(p - 1 for _, p in pairs)
    assert len(NTU25.edges()) == 24  # joint 21 is its own parent


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layouts_are_trees(name):
    layout = LAYOUTS[name]
    v = layout.num_joints
    assert len(layout.edges()) == v - 1
    hop = layout.hop_distance(v)
    assert np.isfinite(hop).all(), "every joint reaches every other"
    assert (layout.adjacency() == layout.adjacency().T).all()
    # mirrored joints have mirrored parents
    for j, p in enumerate(layout.parents):
        assert layout.parents[layout.mirror[j]] in (layout.mirror[p], p)


def test_uniform_toy():
    a = TOY.partitions("uniform")[0]
    expected = np.array([[1 / 2, 1 / 4, 0, 0],
                         [1 / 2, 1 / 4, 1 / 2, 1 / 2],
                         [0, 1 / 4, 1 / 2, 0],
                         [0, 1 / 4, 0, 1 / 2]])
    np.testing.assert_allclose(a, expected)


def test_distance_toy():
    a = TOY.partitions("distance")
    np.testing.assert_allclose(a[0], np.diag([1 / 2, 1 / 4, 1 / 2, 1 / 2]))
    expected = np.zeros((4, 4))
    expected[1, 0] = 1 / 2
    expected[[0, 2, 3], 1] = 1 / 4
    expected[1, 2] = expected[1, 3] = 1 / 2
    np.testing.assert_allclose(a[1], expected)
    np.testing.assert_allclose(a.sum(0), TOY.partitions("uniform")[0])


def test_spatial_toy():
    root, centripetal, centrifugal = TOY.partitions("spatial")
    np.testing.assert_allclose(root, np.diag([1 / 2, 1 / 4, 1 / 2, 1 / 2]))
    expected = np.zeros((4, 4))
    expected[0, 1], expected[1, 2], expected[1, 3] = 1 / 4, 1 / 2, 1 / 2  # neighbour closer to 0
    np.testing.assert_allclose(centripetal, expected)
    expected = np.zeros((4, 4))
    expected[1, 0], expected[2, 1], expected[3, 1] = 1 / 2, 1 / 4, 1 / 4  # neighbour further out
    np.testing.assert_allclose(centrifugal, expected)


def test_symmetric_toy():
    a = TOY.partitions("symmetric")
    assert a.shape == (3, 4, 4)
    np.testing.assert_allclose(a[:2], TOY.partitions("distance"))
    expected = np.zeros((4, 4))
    expected[3, 2] = expected[2, 3] = 1.0
    np.testing.assert_allclose(a[2], expected)


def test_spatial_ntu_uses_whole_tree_distance():
    root, centripetal, centrifugal = NTU25.partitions("spatial")
    # left hand (7) -> its neighbours wrist (6, closer to spine shoulder) and thumb (22, further)
    assert centripetal[6, 7] > 0 and centrifugal[22, 7] > 0
    assert centripetal[22, 7] == 0 and centrifugal[6, 7] == 0
    np.testing.assert_allclose(root + centripetal + centrifugal, NTU25.partitions("uniform")[0], atol=1e-7)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_partitions_are_column_normalised(name, strategy):
    a = LAYOUTS[name].partitions(strategy)
    assert a.dtype == np.float32
    if strategy != "symmetric":
        np.testing.assert_allclose(a.sum(axis=(0, 1)), 1.0, rtol=1e-6)


def test_normalize_digraph_zero_column():
    out = normalize_digraph(np.array([[1.0, 0.0], [3.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.25, 0.0], [0.75, 0.0]])


def test_errors():
    with pytest.raises(ValueError, match="unknown layout 'ntu26'"):
        get_layout("ntu26")
    with pytest.raises(ValueError, match="unknown partition strategy"):
        NTU25.partitions("radial")
    with pytest.raises(ValueError, match="mirror"):
        Layout("bad", ("a", "b"), (0, 0), 0, 0, (1, 1))
    assert get_layout(NTU25) is NTU25


def test_coordinate_dims():
    assert {name: l.dims for name, l in LAYOUTS.items()} == {
        "ntu25": 3, "kinect20": 3, "openpose18": 2, "coco17": 2, "penn13": 2}
