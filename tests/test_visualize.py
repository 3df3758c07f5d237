"""feeders.visualize: PNG grid and GIF written, sane sizes, clear errors."""
import numpy as np
import pytest
from PIL import Image

from feeders.layouts import KINECT20
from feeders.store import Record, StoreWriter, open_store
from feeders.visualize import find_sequence, frame_indices, present_joints, render
from feeders.visualize import main as visualize_main


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "ds", KINECT20, 2, ["a", "b"], channels=3, bodies=2) as w:
        for k in range(2):
            w.add(Record(f"seq{k}", k, rng.normal(size=(6, 2, 20, 3)).astype(np.float32)))
        w.close({})
    return open_store(tmp_path / "ds")


def test_present_joints_and_frame_indices():
    seq = np.ones((2, 1, 3, 3), np.float32)
    seq[0, 0, 1] = 0  # a missing joint
    seq[1, 0, 2, 2] = 0  # 2D + score: confidence 0
    assert present_joints(seq, 3).tolist() == [[[True, False, True]], [[True, True, True]]]
    assert present_joints(seq, 2).tolist() == [[[True, False, True]], [[True, True, False]]]
    assert frame_indices(300, 4).tolist() == [0, 100, 199, 299]
    assert frame_indices(3, 8).tolist() == [0, 1, 2]


def test_png_grid_and_gif(store, tmp_path):
    png = render(store, 1, tmp_path / "s.png", plane="zy", numbers=True, frames=5)
    with Image.open(png) as im:
        # 5 frames -> a 4 x 2 grid of 3-inch panels at 80 dpi
        assert im.size == (4 * 240, 2 * 240)
    gif = render(store, 0, tmp_path / "s.gif", frames=3)
    with Image.open(gif) as im:
        assert im.size == (320, 320) and im.n_frames == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "s.gif", "s.png"]  # no temp


def test_errors_name_the_dataset(store, tmp_path, capsys):
    assert find_sequence(store, None, "seq1") == 1
    with pytest.raises(ValueError, match=rf"--name 'x': no such sequence in {store.root}"):
        find_sequence(store, None, "x")
    with pytest.raises(ValueError, match=rf"--index 2: {store.root} has 2 sequences \(0..1\)"):
        find_sequence(store, 2, None)
    argv = [str(store.root), "--index", "5", "--out", str(tmp_path / "x.png")]
    with pytest.raises(SystemExit) as exit_:
        visualize_main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m feeders.visualize: error: --index 5: {store.root} has 2 sequences (0..1)")
    with pytest.raises(SystemExit) as exit_:
        visualize_main(argv[:-1] + [str(tmp_path / "x.jpg")])
    assert exit_.value.code == 2 and "expected a .gif or .png file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_2d_data_has_only_the_xy_plane(tmp_path):
    with StoreWriter(tmp_path / "ds", "body25", 1, ["a"], channels=3, bodies=1) as w:
        w.add(Record("s", 0, np.ones((2, 1, 25, 3), np.float32)))
        w.close({})
    store = open_store(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"--plane xz needs 3D coordinates, but layout body25 "
                                         r"has 2D; use --plane xy"):
        render(store, 0, tmp_path / "s.png", plane="xz")
    assert render(store, 0, tmp_path / "s.png").is_file()
