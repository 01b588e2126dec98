"""Shared fixtures. Tests never touch the network: Hub and weight downloads run offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach the network: the Hub client and timm resolve from local caches only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = REPO_ROOT.parent / "shared" / "breakhis_sample"


@pytest.fixture(scope="session")
def real_samples() -> list[Path]:
    """The 14 original BreakHis images in ../shared (skipped where that folder is absent)."""
    files = sorted(SHARED_SAMPLES.glob("*.png")) if SHARED_SAMPLES.is_dir() else []
    if not files:
        pytest.skip("../shared/breakhis_sample is absent")
    return files


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep every test's caches (DALA_HOME, TORCH_HOME, HF_HOME) out of the user's home."""
    home = tmp_path_factory.getbasetemp() / "dala_home"
    monkeypatch.setenv("DALA_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))


@pytest.fixture(scope="session")
def tiny_synth_root(tmp_path_factory) -> Path:
    """A tiny generated BreakHis-like tree (12 patients, 2 images per magnification, 96x64 px)."""
    from dala.data.synth import generate

    out = tmp_path_factory.mktemp("tiny_synth")
    return generate(out, seed=0, n_patients=12, images_per_mag=2, size=(96, 64), progress=False)


@pytest.fixture(scope="session")
def tiny_index(tiny_synth_root):
    from dala.data.index import load_index

    return load_index(tiny_synth_root)
