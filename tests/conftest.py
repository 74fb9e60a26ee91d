import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakes import make_venv  # noqa: E402


@pytest.fixture
def venv(tmp_path):
    """A fresh, real, empty virtual environment."""
    return make_venv(tmp_path / "venv")


@pytest.fixture
def venv_factory(tmp_path):
    counter = {"n": 0}

    def make(name=None):
        counter["n"] += 1
        return make_venv(tmp_path / (name or f"venv{counter['n']}"))

    return make


@pytest.fixture(scope="session", autouse=True)
def machine_devices_survive():
    """No test may replace the machine's /dev/null or /dev/full with a regular file (a -o target once did)."""
    import stat as _stat

    yield
    for dev in ("/dev/null", "/dev/full"):
        if os.path.exists(dev):
            assert _stat.S_ISCHR(os.stat(dev).st_mode), f"{dev} is no longer a character device: a test replaced it"
