"""Shared pytest fixtures.

Test data lives outside the repository, in ``../shared/data`` beside the project root
(override with ``IMAMBIG_DATA_DIR``); tests that need it skip cleanly when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures_model", "tests.fixtures_s3"]

DATA_DIR_ENV = "IMAMBIG_DATA_DIR"


def shared_data_dir() -> Path:
    """The shared data folder: ``$IMAMBIG_DATA_DIR`` or ``../shared/data`` from the repo."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (set {DATA_DIR_ENV})")
    return path


@pytest.fixture(scope="session")
def celeba_dir(data_dir: Path) -> Path:
    path = data_dir / "celeba-6k"
    if not (path / "img_align_celeba").is_dir():
        pytest.skip(f"CelebA subset not found at {path}")
    return path
