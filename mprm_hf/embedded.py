"""The embedded default: everything the offline pipeline needs, built on first use under one folder.

`ensure_embedded(root)` makes (only what is missing) a synthetic VisualPRM400K corpus and benchmark, a
BIS-10% stepwise subset of it and the tiny Qwen2-VL, and returns their paths. Recipes and the demo call it so
that `mprm-hf train recipes/tiny-cpu/config.yaml` runs on a fresh checkout with no network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_SEED = 0
# The paper's 10% setting (docs/definitions.md#selection): per-source top 10% by BIS with alpha 0.2.
BIS_TOP_RATIO = 0.1
BIS_ALPHA = 0.2


def ensure_embedded(root: str | os.PathLike = "embedded") -> dict[str, Path]:
    """Build what is missing under `root`; return {root, synthetic, benchmark, model, train}."""
    root = Path(root)
    paths = {
        "root": root,
        "synthetic": root / "synthetic",
        "benchmark": root / "synthetic" / "VisualProcessBench",
        "model": root / "tiny-qwen2-vl",
        "train": root / "bis-10",
    }
    if not (paths["synthetic"] / "annotations").is_dir() or not (paths["benchmark"] / "test.jsonl").is_file():
        from mprm_hf.data.synthetic import DEFAULT_BENCHMARK_TRACES, DEFAULT_ROLLOUTS, write_synthetic

        logger.info("embedded default: writing the synthetic corpus to %s", paths["synthetic"])
        write_synthetic(
            paths["synthetic"],
            rollouts=DEFAULT_ROLLOUTS,
            benchmark_traces=DEFAULT_BENCHMARK_TRACES,
            seed=EMBEDDED_SEED,
            images=True,
        )
    if not (paths["model"] / "config.json").is_file():
        from mprm_hf.modeling import build_tiny_model

        logger.info("embedded default: building the tiny Qwen2-VL in %s", paths["model"])
        build_tiny_model(paths["model"], arch="qwen2_vl", seed=EMBEDDED_SEED)
    if not (paths["train"] / "dataset_info.json").is_file():
        write_bis_subset(paths["synthetic"], paths["train"])
    return paths


def write_bis_subset(corpus: Path, out: Path) -> None:
    """BIS-10% (alpha 0.2) of the corpus as stepwise records (with the `selection.json` build_subset writes)."""
    from mprm_hf.selection.subset import build_subset

    result = build_subset(
        corpus, out, method="bis", fmt="arrow", alpha=BIS_ALPHA, top_ratio=BIS_TOP_RATIO, progress=False
    )
    logger.info(
        "embedded default: %d of %d rollouts selected (BIS-10%%) -> %s",
        result.n_written,
        len(result.scores),
        out,
    )


# The default PRM to show (the Space, `mprm-hf demo`): found or built here, below the quickstart and the Space.
QUICKSTART_OUTPUT = Path("outputs/quickstart")
"""Where `mprm-hf quickstart` (`make demo`) writes its runs."""
TINY_MODEL = Path("embedded") / "tiny-qwen2-vl"
"""The untrained tiny Qwen2-VL that `default_model` builds when nothing is trained yet."""


def run_folder_name(selector: str, fraction: float, seed: int, compute: str = "single_pass") -> str:
    """The folder of one training run of a sweep (the quickstart is a small one): `bis-0.1-seed0`."""
    return f"{selector}-{fraction:g}-seed{seed}" + ("-equal" if compute == "equal_steps" else "")


def trained_model(
    output_dir: str | os.PathLike = QUICKSTART_OUTPUT, selector: str = "bis", seed: int = 0
) -> Path:
    """Where the quickstart leaves a selector's trained PRM (10% subsets, and `full` on all the data)."""
    fraction = 1.0 if selector == "full" else BIS_TOP_RATIO
    return Path(output_dir) / "default" / "runs" / run_folder_name(selector, fraction, seed) / "model"


def default_model() -> Path:
    """The PRM to show when none is named: the quickstart's BIS-10% PRM once `make demo` has trained it,
    else the embedded tiny model, built offline on first use (untrained: the page says so)."""
    if (trained_model() / "config.json").is_file():
        return trained_model()
    if not (TINY_MODEL / "config.json").is_file():
        from mprm_hf.modeling import build_tiny_model

        logger.info("embedded default: building the tiny Qwen2-VL in %s", TINY_MODEL)
        build_tiny_model(TINY_MODEL, arch="qwen2_vl", seed=EMBEDDED_SEED)
    return TINY_MODEL
