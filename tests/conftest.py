"""Shared test fixtures: the repository root on sys.path, few threads, the real data folder."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import torch

    # one thread: on a busy 2-core machine small convolutions stall in a 2-thread pool
    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts with one torch thread and leaves it so, whatever --threads an entry
    point set (tiny models on a shared machine: one thread avoids OpenMP barrier stalls)."""
    import torch

    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def precision_cache(tmp_path_factory):
    """`--precision auto` trials are cached in a directory of the test session, never in the
    user's ~/.cache/skelssl (subprocesses inherit the variable)."""
    import os

    old = os.environ.get("SKELSSL_CACHE_DIR")
    os.environ["SKELSSL_CACHE_DIR"] = str(tmp_path_factory.mktemp("skelssl_cache"))
    yield
    if old is None:
        os.environ.pop("SKELSSL_CACHE_DIR", None)
    else:
        os.environ["SKELSSL_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets of ../shared/data; skips the test when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """The reference files of ../shared/fixtures (e.g. usdrl_release); skips when absent."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


@pytest.fixture
def out_root(tmp_path_factory) -> Path:
    """An empty folder for outputs outside ``tmp_path``, for tests whose ``--src`` is
    ``tmp_path`` itself (an output inside the source is refused)."""
    return tmp_path_factory.mktemp("out")
