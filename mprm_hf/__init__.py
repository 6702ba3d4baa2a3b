"""mprm-hf: select the informative subset of MC-annotated rollouts, train a multimodal PRM on it,
evaluate it on VisualProcessBench and publish both to the Hub.

The public names are imported lazily so that `import mprm_hf` (and the CLI's start-up) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "MPRMError": "mprm_hf.errors",
    "PRMConfig": "mprm_hf.prm_config",
    "PRMTrainer": "mprm_hf.prm_trainer",
    "PRMReward": "mprm_hf.reward",
    "score_steps": "mprm_hf.scoring",
    "score_traces": "mprm_hf.scoring",
    "metrics_from_scores": "mprm_hf.evaluation",
    "load_visualprm400k": "mprm_hf.data.visualprm400k",
    "load_visualprocessbench": "mprm_hf.data.visualprocessbench",
    "load_stepwise": "mprm_hf.data.stepwise",
    "select": "mprm_hf.selection.selectors",
    "build_subset": "mprm_hf.selection.subset",
    "build_reference_subset": "mprm_hf.selection.subset",
    "scan_corpus": "mprm_hf.selection.scan",
    "build_tiny_model": "mprm_hf.modeling",
    "load_model_and_processor": "mprm_hf.modeling",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mprm_hf' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
