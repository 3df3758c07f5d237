import numpy as np
import pytest

import json

from feeders.layouts import (BODY25, H36M17, LAYOUTS, NTU25, STRATEGIES, Layout, LayoutError,
                             choose_layout, get_layout, layout_from_json, normalize_digraph)
from feeders.layouts import main as layouts_main

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
        "ntu25": 3, "kinect20": 3, "openpose18": 2, "coco17": 2, "penn13": 2, "body25": 2,
        "h36m17": 3}


# OpenPose's BODY_25 render pairs (DATA.md §3.1)
BODY25_LIMBS = [(1, 8), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (10, 11),
                (8, 12), (12, 13), (13, 14), (1, 0), (0, 15), (15, 17), (0, 16), (16, 18),
                (14, 19), (19, 20), (14, 21), (11, 22), (22, 23), (11, 24)]


def test_body25_bones_mirror_partitions():
    assert BODY25.dims == 2 and BODY25.num_joints == 25 and BODY25.joints[1] == "neck"
    assert {frozenset(e) for e in BODY25.edges()} == {frozenset(e) for e in BODY25_LIMBS}
    assert BODY25.parents[1] == 1 and BODY25.center == 1  # rooted and centred at the neck
    pairs = {(2, 5), (3, 6), (4, 7), (9, 12), (10, 13), (11, 14), (15, 16), (17, 18), (22, 19),
             (23, 20), (24, 21)}
    assert {(j, m) for j, m in enumerate(BODY25.mirror) if j < m} == \
        {tuple(sorted(p)) for p in pairs}
    assert [BODY25.joints[j] for j in (0, 1, 8)] == ["nose", "neck", "mid_hip"]
    root, centripetal, centrifugal = BODY25.partitions("spatial")
    # mid_hip (8): neighbours neck (1, closer to the neck), right/left hips (9, 12, further);
    # its column holds 4 joints (itself and 3 neighbours), each 1/4
    assert root[8, 8] == pytest.approx(1 / 4) and centripetal[1, 8] == pytest.approx(1 / 4)
    assert centrifugal[9, 8] == centrifugal[12, 8] == pytest.approx(1 / 4)
    assert centripetal[9, 8] == 0 and centrifugal[1, 8] == 0
    # left big toe (19): ankle 14 (closer) and small toe 20 (further), 1/3 each
    assert centripetal[14, 19] == pytest.approx(1 / 3) and centrifugal[20, 19] == pytest.approx(1 / 3)
    sym = BODY25.partitions("symmetric")[2]
    assert sym[5, 2] == sym[2, 5] == 1.0 and sym[:, 1].sum() == 0  # the neck has no mirror


def test_h36m17_bones_mirror_partitions():
    videopose3d_parents = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15]
    assert H36M17.parents == tuple([0] + videopose3d_parents[1:])
    assert H36M17.dims == 3 and H36M17.center == 0 and H36M17.joints[8] == "thorax"
    assert [H36M17.joints[j] for j in (1, 4, 11, 14, 16)] == \
        ["right_hip", "left_hip", "left_shoulder", "right_shoulder", "right_wrist"]
    assert {(j, m) for j, m in enumerate(H36M17.mirror) if j < m} == \
        {(1, 4), (2, 5), (3, 6), (11, 14), (12, 15), (13, 16)}
    root, centripetal, centrifugal = H36M17.partitions("spatial")
    # spine (7): thorax 8 (the graph centre, closer) and hip 0 (further), 1/3 each
    assert centripetal[8, 7] == pytest.approx(1 / 3) and centrifugal[0, 7] == pytest.approx(1 / 3)
    # hip (0): spine 7 closer to the thorax, both hips further, 1/4 each
    assert centripetal[7, 0] == pytest.approx(1 / 4)
    assert centrifugal[1, 0] == centrifugal[4, 0] == pytest.approx(1 / 4)
    # thorax (8): neck, both shoulders and spine are all one hop further
    assert root[8, 8] == pytest.approx(1 / 5) and centripetal[:, 8].sum() == 0


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_json_round_trip_through_the_template_printer(name, tmp_path, capsys):
    layouts_main([name])  # python -m feeders.layouts NAME
    (tmp_path / "mine.json").write_text(capsys.readouterr().out)
    assert get_layout(str(tmp_path / "mine.json")) == LAYOUTS[name]
    assert get_layout(tmp_path / "mine.json") == LAYOUTS[name]


TOY_JSON = {"name": "toy", "dims": 3, "joints": ["a", "b", "c", "d"], "parents": [0, 0, 1, 1],
            "center": "a", "mirror": [["c", "d"]]}


def test_json_by_index_and_1based_parents():
    assert layout_from_json(TOY_JSON) == TOY
    one_based = {**TOY_JSON, "parents_1based": [1, 1, 2, 2], "center": 0, "mirror": [[2, 3]]}
    del one_based["parents"]
    assert layout_from_json(one_based) == TOY
    assert layout_from_json({**TOY_JSON, "graph_center": "b"}).graph_center == 1


@pytest.mark.parametrize("change, message", [
    ({"parents": [0, 2, 1, 1]}, r"field 'parents' has a cycle b -> c -> b"),
    ({"parents": [0, 1, 1, 1]}, r"field 'parents' has 2 roots \['a', 'b'\]"),
    ({"parents": [0, 0, 1, 4]}, r"field 'parents' entry 3 \(d\) is 4, expected an index in \[0, 4\)"),
    ({"parents": [0, 0, 1]}, r"field 'parents' must be a list of 4 parents"),
    ({"parents_1based": [1, 1, 2, 2]}, r"exactly one of the fields 'parents'"),
    ({"mirror": [["c", "d"], ["d", "b"]]}, r"field 'mirror' pair 1 .* not a left/right pairing"),
    ({"mirror": [["c", "c"]]}, r"not a left/right pairing"),
    ({"mirror": [["c", "left_toe"]]}, r"field 'mirror' pair 0: unknown joint name 'left_toe'"),
    ({"mirror": [["c"]]}, r"field 'mirror' pair 0: expected \[left, right\]"),
    ({"center": "pelvis"}, r"field 'center': unknown joint name 'pelvis'"),
    ({"center": 7}, r"field 'center': expected a joint name or an index in \[0, 4\)"),
    ({"dims": 4}, r"field 'dims' must be 2 or 3"),
    ({"joints": ["a", "b", "b", "d"]}, r"field 'joints' names \['b'\] more than once"),
    ({"parent": [0, 0, 1, 1]}, r"unknown field\(s\) \['parent'\]"),
])
def test_json_validation_names_file_and_field(tmp_path, change, message):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**TOY_JSON, **change}))
    with pytest.raises(LayoutError, match=rf"{path}: .*{message}"):
        get_layout(str(path))


def test_json_file_errors(tmp_path):
    with pytest.raises(LayoutError, match=r"missing.json: cannot read layout file"):
        get_layout(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LayoutError, match=r"bad.json: not valid JSON"):
        get_layout(str(tmp_path / "bad.json"))
    del_dims = dict(TOY_JSON)
    del del_dims["dims"]
    (tmp_path / "nodims.json").write_text(json.dumps(del_dims))
    with pytest.raises(LayoutError, match=r"nodims.json: field 'dims' missing"):
        get_layout(str(tmp_path / "nodims.json"))


def test_choose_layout_infers_only_a_unique_candidate(capsys):
    assert choose_layout(None, 25, (2,), "src") == (BODY25, "inferred")
    assert choose_layout(None, 25, (3,), "src") == (NTU25, "inferred")
    assert choose_layout(None, 17, (3,), "src") == (H36M17, "inferred")
    layout, how = choose_layout(None, 20, (3,), "src.pkl")
    assert (layout.name, how) == ("kinect20", "inferred")
    err = capsys.readouterr().err
    assert "src.pkl: no layout declared; 20 joints in 3D read as built-in layout kinect20" in err
    assert "--layout mine.json" in err and "python -m feeders.layouts kinect20" in err
    # 3 channels are x, y, z or x, y + score: 25 joints could be either built-in
    with pytest.raises(LayoutError, match=r"src: cannot choose a layout for 25 joints in 3D or 2D; "
                                          r"candidates: ntu25 \(25 joints, 3D\), body25 "
                                          r"\(25 joints, 2D\); declare it with --layout"):
        choose_layout(None, 25, (3, 2), "src")
    with pytest.raises(LayoutError, match=r"src: cannot choose a layout for 19 joints in 2D; "
                                          r"no built-in layout fits"):
        choose_layout(None, 19, (2,), "src")


def test_choose_layout_checks_a_declared_layout(tmp_path):
    assert choose_layout("ntu25", 25, (3, 2), "src") == (NTU25, "declared")
    (tmp_path / "toy.json").write_text(json.dumps(TOY_JSON))
    assert choose_layout(str(tmp_path / "toy.json"), 4, (3,), "src") == (TOY, "declared")
    with pytest.raises(LayoutError, match=r"src: the data has 20 joints, but layout ntu25 has 25"):
        choose_layout("ntu25", 20, (3,), "src")
    with pytest.raises(LayoutError, match=r"src: layout ntu25 is 3D, but the data's channels "
                                          r"hold 2D coordinates"):
        choose_layout("ntu25", 25, (2,), "src")
