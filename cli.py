"""The console commands that `pip install .` puts on the PATH (pyproject.toml, [project.scripts]).

Each command runs its entry point exactly as `python ENTRY.py` / `python -m MODULE` does: the
training and evaluation ones (skel-pretrain, -recog, -retrieval, -detect) through
`engine.run_program` (their process-wide settings, e.g. --threads, applied), the others'
`main()` through `engine.run_cli`. A bad flag or input is one line `COMMAND: error: ...` with
exit status 2, a non-finite loss exits 1.

    skel-pretrain      = python pretrain.py             skel-prepare   = python -m feeders.prepare
    skel-recog         = python action_recognition.py   skel-synthetic = python -m feeders.synthetic
    skel-retrieval     = python action_retrieval.py     skel-inspect   = python -m feeders.inspect
    skel-detect        = python action_detection.py
    skel-baseline      = python -m evaluation.baseline  skel-export    = python -m feeders.export
    skel-fusion        = python -m evaluation.fusion    skel-report    = python -m evaluation.report
    skel-plots         = python -m evaluation.plots     skel-visualize = python -m feeders.visualize
    skel-export-encoder = python -m models.export
"""
from __future__ import annotations

import os
import sys


def _run(main) -> None:
    from engine import run_cli

    run_cli(main, os.path.basename(sys.argv[0]))


def _run_program(module) -> None:
    """A training / evaluation entry point, with its process-wide settings (engine.run_program)."""
    from engine import run_program

    run_program(module.parse_args, module.run, os.path.basename(sys.argv[0]))


def pretrain() -> None:
    import pretrain as module
    _run_program(module)


def recog() -> None:
    import action_recognition as module
    _run_program(module)


def retrieval() -> None:
    import action_retrieval as module
    _run_program(module)


def detect() -> None:
    import action_detection as module
    _run_program(module)


def prepare() -> None:
    from feeders import prepare as module
    _run(module.main)


def synthetic() -> None:
    from feeders import synthetic as module
    _run(module.main)


def inspect() -> None:
    from feeders import inspect as module
    _run(module.main)


def export() -> None:
    from feeders import export as module
    _run(module.main)


def visualize() -> None:
    from feeders import visualize as module
    _run(module.main)


def baseline() -> None:
    from evaluation import baseline as module
    _run(module.main)


def fusion() -> None:
    from evaluation import fusion as module
    _run(module.main)


def report() -> int:
    from evaluation import report as module
    return module.main()  # its exit status, as `python -m evaluation.report`


def plots() -> None:
    from evaluation import plots as module
    _run(module.main)


def export_encoder() -> None:
    from models import export as module
    _run(module.main)
