"""Shared fixtures: one synthetic world and one tiny model per test worker, built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic VisualPRM400K + VisualProcessBench with images (the embedded default's shape)."""
    from mprm_hf.data.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, rollouts=600, benchmark_traces=120, seed=0, images=True)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2-VL PRM backbone, saved to disk once per worker."""
    from mprm_hf.modeling import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2-vl", arch="qwen2_vl", seed=0)


@pytest.fixture(scope="session")
def tiny_stepwise(synthetic_dir: Path):
    """Four stepwise records of the synthetic corpus, through the project's own converter."""
    from mprm_hf.data.stepwise import to_stepwise
    from mprm_hf.data.visualprm400k import load_visualprm400k

    rollouts, _ = load_visualprm400k(synthetic_dir)
    return to_stepwise(rollouts)[0].select(range(4))
