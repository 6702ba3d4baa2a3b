"""`evaluate` modules shipped as package data, so `evaluate.load` works from an installed mprm_hf offline."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any


def visualprocessbench_path() -> Path:
    """The folder of the VisualProcessBench metric; `evaluate.load(str(path))` loads it without the Hub."""
    return Path(str(files("mprm_hf.metrics").joinpath("visualprocessbench")))


def load_visualprocessbench_metric(**load_kwargs: Any):
    """The VisualProcessBench `evaluate.Metric` from the installed package (no network)."""
    import evaluate

    return evaluate.load(str(visualprocessbench_path()), **load_kwargs)
