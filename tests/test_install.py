"""`pip install -e .` of the flat layout into a fresh virtual environment gives importable
modules and working console commands (about 3 s: no dependencies are downloaded, the new
environment sees this interpreter's packages through a .pth file; `pip install .` with build
isolation needs the package index and is left to CI: see README, "Installing")."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_into_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the running interpreter's packages (torch, numpy, pip, setuptools) for the new venv
    Path(site, "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    out = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "-e", str(ROOT)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    probe = subprocess.run([str(python), "-c", "import engine, engine.loop, pretrain, cli, "
                            "action_detection, models.dste, feeders.formats.pyskl, evaluation.knn; "
                            "print(engine.ROOT)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == str(ROOT)
    scripts = {path.name for path in (venv / "bin").glob("skel-*")}
    assert {"skel-pretrain", "skel-recog", "skel-retrieval", "skel-detect", "skel-prepare",
            "skel-export",
            "skel-plots", "skel-export-encoder", "skel-report"} <= scripts
    for command in ("skel-pretrain", "skel-plots"):  # each start imports torch: two suffice
        help_out = subprocess.run([str(venv / "bin" / command), "--help"], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=120)
        assert help_out.returncode == 0, f"{command}: {help_out.stderr}"
        assert help_out.stdout.startswith(f"usage: "), help_out.stdout
    bad = subprocess.run([str(venv / "bin" / "skel-inspect"), str(tmp_path / "missing")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "missing" in bad.stderr and "Traceback" not in bad.stderr
