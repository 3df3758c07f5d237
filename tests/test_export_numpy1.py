"""The pyskl pickle of feeders.export loads with plain pickle.load under numpy 1.26 (what pyskl
and mmaction2 users run) as well as numpy 2.

The numpy 1.26 environment is a virtual environment with only numpy==1.26.4, created on first
use in $SKELSSL_NP1_VENV (default ~/.cache/skelssl-np1; about 11 s with the wheel from the
package index, then reused); the test skips, saying why, only when it cannot be created.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from feeders.export import dump_portable_pickle, to_pyskl
from feeders.store import Record, StoreWriter

NP1 = "1.26.4"
LOADER = """
import pickle, sys, warnings
import numpy as np
warnings.simplefilter("error")
assert np.__version__ == sys.argv[2], np.__version__
with open(sys.argv[1], "rb") as f:
    data = pickle.load(f)
for ann in data["annotations"]:
    kp = ann["keypoint"]
    assert kp.dtype == np.float32 and kp.ndim == 4, (kp.dtype, kp.shape)
    assert ann["keypoint_score"].dtype == np.float32 and ann["keypoint_score"].shape == kp.shape[:3]
    assert isinstance(ann["label"], int) and isinstance(ann["total_frames"], int)
    assert kp.shape[1] == ann["total_frames"] and len(ann["img_shape"]) == 2
    print(ann["frame_dir"], ann["label"], kp.shape, float(kp.astype(np.float64).sum()),
          float(ann["keypoint_score"].astype(np.float64).sum()), ann["img_shape"])
print("split", sorted(data["split"].items()))
"""


def numpy1_python() -> Path:
    """The python of a venv holding numpy 1.26.4 (created on first use)."""
    venv = Path(os.environ.get("SKELSSL_NP1_VENV", Path.home() / ".cache" / "skelssl-np1"))
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import numpy; assert numpy.__version__ == '{NP1}'"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)],
                          capture_output=True, text=True, timeout=300)
    if made.returncode:
        pytest.skip(f"cannot create a numpy {NP1} venv at {venv}: {made.stderr.strip()[-300:]}")
    got = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          f"numpy=={NP1}"], capture_output=True, text=True, timeout=600)
    if got.returncode or subprocess.run(check, capture_output=True).returncode:
        pytest.skip(f"cannot install numpy=={NP1} into {venv} (no package index?): "
                    f"{got.stderr.strip()[-300:]}")
    return python


def make_2d_store(path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = StoreWriter(path, "coco17", num_classes=3, class_names=["a", "b", "c"],
                         channels=3, bodies=2, dtype="float32", source_format="test")
    for k in range(4):
        data = np.zeros((5 + k, 2, 17, 3), np.float32)
        bodies = 1 + k % 2
        data[:, :bodies, :, :2] = rng.uniform(0, 640, size=(5 + k, bodies, 17, 2))
        data[:, :bodies, :, 2] = rng.uniform(size=(5 + k, bodies, 17))
        writer.add(Record(name=f"clip{k}", label=k % 3, data=data))
    writer.close({"train": [0, 1, 2], "val": [3]})


def test_pyskl_export_loads_under_numpy1_and_numpy2(tmp_path):
    make_2d_store(tmp_path / "ds")
    out = to_pyskl(tmp_path / "ds", tmp_path / "out.pkl")
    assert b"numpy._core" not in out.read_bytes()  # numpy 2's module names are absent
    ran = {}
    for name, python, version in (("numpy2", Path(sys.executable), np.__version__),
                                  ("numpy1", numpy1_python(), NP1)):
        res = subprocess.run([str(python), "-c", LOADER, str(out), version],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{name}: {res.stderr}"
        ran[name] = res.stdout
    assert ran["numpy1"] == ran["numpy2"]  # the same values under both


def test_portable_pickle_round_trip_values():
    obj = {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
           "b": [np.zeros((0, 2), np.int64), np.asfortranarray(np.eye(3, dtype=np.float16))],
           "c": np.array(["x", "yz"]), "d": (1, 2.5, "s")}
    buf = io.BytesIO()
    dump_portable_pickle(obj, buf)
    back = pickle.loads(buf.getvalue())
    for key in ("a", "c"):
        assert back[key].dtype == obj[key].dtype
        np.testing.assert_array_equal(back[key], obj[key])
    for got, want in zip(back["b"], obj["b"]):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert back["d"] == obj["d"]
    assert b"numpy.core.multiarray" in buf.getvalue() and b"numpy._core" not in buf.getvalue()
