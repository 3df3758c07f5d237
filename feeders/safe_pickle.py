"""The one way feeders read pickle files: a restricted unpickler.

A pickle can run any code while it loads (its ``__reduce__`` names a function and arguments
that the loader calls). The dataset formats that come as pickles (pyskl annotation files,
2s-AGCN ``*_label.pkl``) only hold builtin containers and scalars and numpy arrays, dtypes and
scalars, so ``load`` admits only the globals those need and refuses any other one with an error
naming the file and the global. ``trusted=True`` (``feeders.prepare --trust-pickle``) falls
back to plain ``pickle.load`` for files you trust that hold something else.

Admitted globals, under both numpy 1.x names (``numpy.core.*``) and numpy 2.x names
(``numpy._core.*``): ``multiarray._reconstruct`` and ``multiarray.scalar`` (arrays and scalars,
protocols 0-4), ``numeric._frombuffer`` (arrays, protocol 5), ``numpy.ndarray``,
``numpy.dtype``; ``_codecs.encode`` restricted to latin-1 (how Python 3 writes bytes at
protocol 2); ``builtins`` (or Python 2's ``__builtin__``) ``set frozenset bytearray complex``
and the plain types; ``collections.OrderedDict`` / ``defaultdict``.
Python 2 strings are decoded as latin-1, as numpy recommends for its arrays.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np

TRUST_FLAG = "--trust-pickle"


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the admitted set (the message names it)."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes (``encode(text, 'latin1')``) only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} (only latin1 is "
                                f"admitted)")
    return text.encode("latin1")


def _admitted() -> dict[tuple[str, str], object]:
    """(module, name) -> the object a restricted load may use."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2.x / 1.x
    numpy_objects = {("multiarray", "_reconstruct"): core.multiarray._reconstruct,
                     ("multiarray", "scalar"): core.multiarray.scalar,
                     ("numeric", "_frombuffer"): core.numeric._frombuffer}
    admitted = {(f"{prefix}.{module}", name): obj
                for prefix in ("numpy.core", "numpy._core")
                for (module, name), obj in numpy_objects.items()}
    admitted[("numpy", "ndarray")] = np.ndarray
    admitted[("numpy", "dtype")] = np.dtype
    admitted[("_codecs", "encode")] = _latin1_encode
    for builtin in (set, frozenset, bytearray, complex, list, dict, tuple, str, bytes, int,
                    float, bool):
        for module in ("builtins", "__builtin__"):
            admitted[(module, builtin.__name__)] = builtin
    admitted[("collections", "OrderedDict")] = collections.OrderedDict
    admitted[("collections", "defaultdict")] = collections.defaultdict
    return admitted


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only ``_admitted()`` globals."""

    _ADMITTED = _admitted()

    def find_class(self, module: str, name: str):
        try:
            return self._ADMITTED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing global '{module}.{name}'") from None


def load(path, trusted: bool = False):
    """The object pickled in ``path``; ``trusted`` uses plain ``pickle.load`` instead.

    Raises ValueError naming the file: for a refused global (with the global and the
    ``--trust-pickle`` opt-out), for a missing file and for a file that is not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            if trusted:
                return pickle.load(f)
            return RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as e:
        raise ValueError(f"{path}: {e}: this pickle would run code or build objects the "
                         f"dataset formats do not use (only builtin containers and numpy "
                         f"arrays are admitted); if you trust the file, pass "
                         f"{TRUST_FLAG}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
            TypeError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
