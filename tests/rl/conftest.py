"""Fixtures for the RL tests: one tiny model per session, built offline in well under a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_rl.rl.model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("rl") / "tiny", seed=0)
