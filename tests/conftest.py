"""Shared test helpers. Test data lives in tests/data/ (copied from the project's golden sets)."""
from __future__ import annotations

import os
import pathlib

import pytest

DATA = pathlib.Path(__file__).parent / "data"


def data_file(*parts: str) -> pathlib.Path:
    """Path of a test data file; in CI (CI=true) a missing file fails the test, elsewhere it skips."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        msg = f"test data file missing: {path.relative_to(DATA.parent.parent)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path
