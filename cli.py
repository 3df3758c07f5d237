"""The console commands that `pip install .` puts on the PATH (pyproject.toml, [project.scripts]).

Each command runs one entry point's `main()` on `sys.argv` and turns a bad input (ValueError,
FileNotFoundError, a non-finite loss) into one line `COMMAND: error: ...` and exit status 1,
as `python ENTRY.py` does; a bad flag is argparse's `COMMAND: error: ...` with status 2.

    skel-pretrain      = python pretrain.py             skel-prepare   = python -m feeders.prepare
    skel-recog         = python action_recognition.py   skel-synthetic = python -m feeders.synthetic
    skel-retrieval     = python action_retrieval.py     skel-inspect   = python -m feeders.inspect
    skel-baseline      = python -m evaluation.baseline  skel-export    = python -m feeders.export
    skel-fusion        = python -m evaluation.fusion    skel-report    = python -m evaluation.report
    skel-plots         = python -m evaluation.plots     skel-export-encoder = python -m models.export
"""
from __future__ import annotations

import os
import sys
from typing import Callable


def _run(main: Callable[[], object]) -> int:
    """main() with bad-input errors as one line on stderr; the exit status (0 on success)."""
    from engine import NonFiniteLoss

    try:
        status = main()
    except (ValueError, FileNotFoundError, NonFiniteLoss) as err:
        print(f"{os.path.basename(sys.argv[0])}: error: {err}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def pretrain() -> int:
    import pretrain as module
    return _run(module.main)


def recog() -> int:
    import action_recognition as module
    return _run(module.main)


def retrieval() -> int:
    import action_retrieval as module
    return _run(module.main)


def prepare() -> int:
    from feeders import prepare as module
    return _run(module.main)


def synthetic() -> int:
    from feeders import synthetic as module
    return _run(module.main)


def inspect() -> int:
    from feeders import inspect as module
    return _run(module.main)


def export() -> int:
    from feeders import export as module
    return _run(module.main)


def baseline() -> int:
    from evaluation import baseline as module
    return _run(module.main)


def fusion() -> int:
    from evaluation import fusion as module
    return _run(module.main)


def report() -> int:
    from evaluation import report as module
    return _run(module.main)


def plots() -> int:
    from evaluation import plots as module
    return _run(module.main)


def export_encoder() -> int:
    from models import export as module
    return _run(module.main)
