"""The embedded default: everything the offline pipeline needs, built on first use under one folder.

`ensure_embedded(root)` makes (only what is missing) a synthetic VisualPRM400K corpus and benchmark and a
BIS-10% stepwise subset of it, and returns their paths with the base model's: the pretrained tiny base that
ships with the package (`mprm_hf/assets/tiny-base`, made by `mprm-hf pretrain recipes/tiny-base/config.yaml`),
or, as the ablation, the same tiny Qwen2-VL from random weights, built under `root`. Recipes and the demo call
it so that `mprm-hf train recipes/tiny-cpu/config.yaml` runs on a fresh checkout with no network.
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


# The pretrained base every tiny PRM fine-tunes from: package data, so a fresh install has it offline.
TINY_BASE = Path(__file__).resolve().parent / "assets" / "tiny-base"
TINY_BASE_RECIPE = "recipes/tiny-base/config.yaml"
# The base a tiny PRM starts from: the shipped pretrained one, or random weights (the ablation).
EMBEDDED_BASES = ("pretrained", "random")
RANDOM_BASE_DIR = "tiny-qwen2-vl"


def embedded_base(base: str = "pretrained", root: str | os.PathLike = "embedded") -> Path:
    """The folder of the tiny base model: the shipped pretrained base, or the same shape from random weights
    (built under `root` on first use)."""
    if base not in EMBEDDED_BASES:
        from mprm_hf.errors import MPRMError

        raise MPRMError(f"embedded base must be one of {', '.join(EMBEDDED_BASES)}, got {base!r}")
    if base == "pretrained":
        if not (TINY_BASE / "model.safetensors").is_file():
            from mprm_hf.errors import MPRMError

            raise MPRMError(
                f"{TINY_BASE}: the shipped pretrained base is missing from this installation; rebuild it with "
                f"`mprm-hf pretrain {TINY_BASE_RECIPE} --output_dir {TINY_BASE}`"
            )
        return TINY_BASE
    folder = Path(root) / RANDOM_BASE_DIR
    if not (folder / "config.json").is_file():
        from mprm_hf.modeling import build_tiny_model
        from mprm_hf.pretrain import BASE_SHAPE

        logger.info("embedded default: building the random-init tiny base in %s", folder)
        build_tiny_model(folder, arch="qwen2_vl", seed=EMBEDDED_SEED, **BASE_SHAPE)
    return folder


def ensure_embedded(root: str | os.PathLike = "embedded", base: str = "pretrained") -> dict[str, Path]:
    """Build what is missing under `root`; return {root, synthetic, benchmark, model, train}."""
    root = Path(root)
    paths = {
        "root": root,
        "synthetic": root / "synthetic",
        "benchmark": root / "synthetic" / "VisualProcessBench",
        "model": embedded_base(base, root),
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
    else the shipped tiny base (pretrained, but never trained as a PRM: the page says so)."""
    if (trained_model() / "config.json").is_file():
        return trained_model()
    return embedded_base("pretrained")
