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
