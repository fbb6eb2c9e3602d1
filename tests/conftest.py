import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REALDATA = SHARED / "realdata"

# One thread per process: faster on the 2-core machines than two threads in one (DESIGN.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def realdata():
    """Path to ../shared/realdata; the test is skipped when it is absent."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not present")
    return REALDATA
