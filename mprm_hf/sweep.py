"""`mprm-hf sweep --config recipes/sweeps/tiny.yaml`: the data-efficiency sweep.

Fractions x selectors x seeds (x worlds of a noise-knob grid x compute policies): each run selects a subset
of the synthetic corpus, trains the PRM recipe on it, and scores it on the world's VisualProcessBench three
ways: at threshold 0.5, at a threshold calibrated on a separate calibration benchmark (another world seed),
and the test-set oracle (reported under its own name). Each run also reports its training compute
(optimizer steps, tokens, wall time), so "ten times cheaper" reads as compute against score.

Runs are resumable: a run whose `result.json` exists is skipped. The sweep writes `results.jsonl`, a
markdown table (`results.md`) and one plot per world and compute policy (`plot-*.png`).
"""

from __future__ import annotations

import io
import json
import math
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mprm_hf.embedded import run_folder_name
from mprm_hf.errors import MPRMError
from mprm_hf.fileio import write_bytes_atomic, write_text_atomic

COMPUTE_POLICIES = ("single_pass", "equal_steps")
# Selectors of the sweep and the defaults of their parameters; bis's alpha may map fraction -> alpha.
SWEEP_SELECTORS = ("bis", "random", "mixed", "reliable", "low-mc", "entropy")
FULL = "full"
# The entropy selector scores rollouts with the full-data PRM of the same seed when its model is this word.
FULL_DATA_MODEL = "full-data"
# Each run's best-of-N line: accuracy at this N by the mean step reward, on the world's candidate pool.
BON_N = 8
BON_AGGREGATE = "mean"


@dataclass
class SweepConfig:
    """A sweep recipe (YAML, recipes/sweeps/): the world, the training recipe, and the grid of runs. Every
    field is also a flag (`--output-dir`, `--seeds 0 1`, ...) that overrides the recipe."""

    output_dir: str = field(default="outputs/sweeps/tiny", metadata={"help": "where the sweep is written"})
    train_recipe: str = field(
        default="recipes/tiny-cpu/config.yaml", metadata={"help": "the `mprm-hf train` recipe of every run"}
    )
    train_args: list[str] = field(
        default_factory=list, metadata={"help": "extra `mprm-hf train` flags of every run (recipe: a list)"}
    )
    rollouts: int | None = field(default=None, metadata={"help": "corpus size (default: the synth default)"})
    benchmark_traces: int | None = field(
        default=None, metadata={"help": "traces of each benchmark (default: the synth default)"}
    )
    world_seed: int = field(default=0, metadata={"help": "seed of the synthetic world"})
    calibration_seed: int = field(
        default=1000, metadata={"help": "seed of the world whose benchmark calibrates the threshold"}
    )
    noise: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "synth noise overrides, a mapping (docs/synthetic.md)"}
    )
    noise_grid: dict[str, list[Any]] = field(
        default_factory=dict, metadata={"help": "one noise field and its values: one world per value"}
    )
    fractions: list[float] = field(
        default_factory=lambda: [0.05, 0.1, 0.25, 0.5],
        metadata={"help": "subset sizes, fractions of rollouts"},
    )
    selectors: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"bis": {}, "random": {}},
        metadata={
            "help": "recipe: selector -> parameters (a parameter may map fraction -> value); flag: run only these "
            "of the recipe's selectors",
            "type": str,
            "nargs": "+",
            "metavar": "NAME",
        },
    )
    full_data: bool = field(default=True, metadata={"help": "train on the full data too (one run per seed)"})
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata={"help": "selection and training seeds"}
    )
    compute: list[str] = field(
        default_factory=lambda: ["single_pass"],
        metadata={"help": f"compute policies: {', '.join(COMPUTE_POLICIES)}"},
    )
    bon_questions: int = field(
        default=64, metadata={"help": "questions of the world's best-of-N pool (0: no best-of-N)"}
    )
    bon_candidates: int = field(default=16, metadata={"help": "candidates per question of that pool"})

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepConfig:
        """A sweep recipe as `mprm-hf sweep --config PATH` reads it, checked."""
        return parse_args(["--config", str(path)])

    def check(self, where: str | Path) -> None:
        lists = {"fractions": (int, float), "seeds": (int,), "compute": (str,), "train_args": (str,)}
        for name, kinds in lists.items():
            value = getattr(self, name)
            if not isinstance(value, list) or any(
                isinstance(v, bool) or not isinstance(v, kinds) for v in value
            ):
                raise MPRMError(
                    f"{where}: field {name!r} must be a list of {kinds[-1].__name__}, got {value!r}"
                )
        for name in ("selectors", "noise", "noise_grid"):
            if not isinstance(getattr(self, name), dict):
                raise MPRMError(f"{where}: field {name!r} must be a mapping, got {getattr(self, name)!r}")
        for name in self.selectors:
            if name not in SWEEP_SELECTORS:
                raise MPRMError(
                    f"{where}: field 'selectors': unknown selector {name!r} ({', '.join(SWEEP_SELECTORS)})"
                )
        for policy in self.compute:
            if policy not in COMPUTE_POLICIES:
                raise MPRMError(
                    f"{where}: field 'compute': unknown policy {policy!r} ({', '.join(COMPUTE_POLICIES)})"
                )
        for fraction in self.fractions:
            if not 0 < fraction < 1:
                raise MPRMError(f"{where}: field 'fractions': {fraction!r} is not in (0, 1)")
        if ("equal_steps" in self.compute or "entropy" in self.selectors) and not self.full_data:
            raise MPRMError(f"{where}: 'equal_steps' and 'entropy' need the full-data runs (full_data: true)")
        for name in ("bon_questions", "bon_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MPRMError(f"{where}: field {name!r} must be a whole number >= 0, got {value!r}")
        if self.bon_questions and self.bon_candidates < BON_N:
            raise MPRMError(f"{where}: field 'bon_candidates' must be at least {BON_N} (best-of-{BON_N})")
        if len(self.noise_grid) > 1:
            raise MPRMError(f"{where}: field 'noise_grid': one noise field at a time")


def selector_params(name: str, params: dict[str, Any], fraction: float) -> dict[str, Any]:
    """A selector's parameters at one fraction: a mapping value is looked up by the fraction."""
    resolved = {}
    for key, value in params.items():
        if isinstance(value, dict):
            if fraction not in value:
                raise MPRMError(f"selector {name!r}: parameter {key!r} has no value for fraction {fraction}")
            value = value[fraction]
        resolved[key] = value
    return resolved


def worlds(config: SweepConfig) -> list[tuple[str, dict[str, Any]]]:
    """(name, noise overrides) of every world of the sweep."""
    if not config.noise_grid:
        return [("default", dict(config.noise))]
    ((knob, values),) = config.noise_grid.items()
    return [(f"{knob}={value}", {**config.noise, knob: value}) for value in values]


def write_world(folder: Path, config: SweepConfig, noise: dict[str, Any]) -> None:
    """The corpus + benchmark, a best-of-N pool, and a calibration benchmark from another seed (each
    written once)."""
    from mprm_hf.data.synthetic import (
        BON_DIR,
        DEFAULT_BENCHMARK_TRACES,
        DEFAULT_ROLLOUTS,
        noise_from_config,
        write_bon_pool,
        write_synthetic,
    )

    model = noise_from_config(None, noise)
    traces = config.benchmark_traces or DEFAULT_BENCHMARK_TRACES
    if not (folder / "world" / "synth.json").is_file():
        write_synthetic(
            folder / "world",
            rollouts=config.rollouts or DEFAULT_ROLLOUTS,
            benchmark_traces=traces,
            seed=config.world_seed,
            noise=model,
        )
    if config.bon_questions and not (folder / "world" / BON_DIR / "pool.jsonl").is_file():
        write_bon_pool(
            folder / "world", config.bon_questions, config.bon_candidates, seed=config.world_seed, noise=model
        )
    if not (folder / "calibration" / "synth.json").is_file():
        write_synthetic(
            folder / "calibration",
            rollouts=0,
            benchmark_traces=traces,
            seed=config.calibration_seed,
            noise=model,
        )


def save_subset(
    corpus: Path, method: str, fraction: float | None, params: dict[str, Any], seed: int, out: Path
) -> tuple[int, int]:
    """Select from the corpus into stepwise records (an Arrow folder, with the selection.json the model card
    reads); return the numbers of rollouts and labelled steps kept."""
    from mprm_hf.selection.subset import build_subset

    budget = {} if method == FULL else {"top_ratio": fraction}
    seeded = {"seed": seed} if method in {"random", "mixed"} else {}
    result = build_subset(
        corpus, out, method=method, fmt="arrow", progress=False, **budget, **seeded, **params
    )
    steps = result.scores.column("n_steps")[result.selection.rows[result.written_rows.written]]
    return result.n_written, int(steps.sum())


def train(
    dataset: Path, model: Path, config: SweepConfig, seed: int, max_steps: int | None, world_dir: Path
) -> float:
    from mprm_hf.train import main as train_main

    started = time.perf_counter()
    argv = [
        config.train_recipe,
        # a recipe without a model fine-tunes the embedded tiny base; a random-init one is built per world
        "--embedded_root",
        str(world_dir),
        "--dataset_name",
        str(dataset),
        "--output_dir",
        str(model),
        "--seed",
        str(seed),
        "--eval_fraction",
        "0",
        "--include_num_input_tokens_seen",
        "true",
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
        *config.train_args,
    ]
    if max_steps is not None:
        argv += ["--max_steps", str(max_steps)]
    train_main(argv)
    return time.perf_counter() - started


def score(model: Path, benchmark: Path, out: Path) -> Path:
    from mprm_hf.evaluation import main as evaluate_main

    if not (out / "metrics.json").is_file():
        evaluate_main(["--model", str(model), "--benchmark", str(benchmark), "--out", str(out)])
    return out / "scores.jsonl"


def best_of_n(model: Path, world_dir: Path) -> dict[str, Any]:
    """A run's best-of-N accuracy and its interval on the world's pool (its rewards cached beside it)."""
    from mprm_hf.bon import bon_at
    from mprm_hf.data.synthetic import BON_DIR

    line = bon_at(model, world_dir / "world" / BON_DIR, BON_N, BON_AGGREGATE)
    return {"bon": line["accuracy"], "bon_ci": line["ci"]}


def run_one(run_dir: Path, world_dir: Path, config: SweepConfig, spec: dict[str, Any]) -> dict[str, Any]:
    """Select, train, score one run; its result.json makes it skip next time (a result from before the
    sweep had a pool gains its best-of-N line from the kept model)."""
    from mprm_hf.evaluation import metrics_from_scores

    result_file = run_dir / "result.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text(encoding="utf-8"))
        if config.bon_questions and "bon" not in result and (run_dir / "model" / "config.json").is_file():
            result.update(best_of_n(run_dir / "model", world_dir))
            write_text_atomic(result_file, json.dumps(result, indent=2) + "\n")
        return result
    run_dir.mkdir(parents=True, exist_ok=True)
    data, model = run_dir / "data", run_dir / "model"
    n_rollouts, n_steps = save_subset(
        world_dir / "world", spec["selector"], spec["fraction"], spec["params"], spec["seed"], data
    )
    train_s = train(data, model, config, spec["seed"], spec.get("max_steps"), world_dir)
    state = json.loads((model / "trainer_state.json").read_text(encoding="utf-8"))
    test = score(model, world_dir / "world" / "VisualProcessBench", run_dir / "eval")
    calibration = score(model, world_dir / "calibration" / "VisualProcessBench", run_dir / "eval-calibration")
    at_half = metrics_from_scores(test)
    calibrated = metrics_from_scores(test, calibration=calibration)
    result = {
        **{key: spec[key] for key in ("world", "compute", "selector", "fraction", "seed")},
        "params": spec["params"],
        "rollouts": n_rollouts,
        "steps": n_steps,
        "optimizer_steps": state["global_step"],
        "tokens": state.get("num_input_tokens_seen"),
        "train_s": round(train_s, 2),
        "auc": at_half["auc"],
        "overall": at_half["overall"],
        "overall_calibrated": calibrated["overall"],
        "threshold_calibrated": calibrated["threshold"],
        "oracle_overall": at_half["oracle_overall"],
    }
    if config.bon_questions:
        result.update(best_of_n(model, world_dir))
    write_text_atomic(result_file, json.dumps(result, indent=2) + "\n")
    shutil.rmtree(data, ignore_errors=True)  # the subset is cheap to rebuild; the model stays for the Space
    return result


def plan(config: SweepConfig, world: str) -> list[dict[str, Any]]:
    """Every run of one world, full-data runs first (entropy and equal steps need them)."""
    runs = []
    for seed in config.seeds:
        if config.full_data:
            runs.append(
                {
                    "world": world,
                    "compute": "single_pass",
                    "selector": FULL,
                    "fraction": 1.0,
                    "seed": seed,
                    "params": {},
                }
            )
        for policy in config.compute:
            for fraction in config.fractions:
                for name, params in config.selectors.items():
                    resolved = selector_params(name, params, fraction)
                    runs.append(
                        {
                            "world": world,
                            "compute": policy,
                            "selector": name,
                            "fraction": fraction,
                            "seed": seed,
                            "params": resolved,
                        }
                    )
    return runs


def run_name(spec: dict[str, Any]) -> str:
    return run_folder_name(spec["selector"], spec["fraction"], spec["seed"], spec["compute"])


def run_sweep(config: SweepConfig, *, progress: bool = True) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from mprm_hf.evaluation import position_baseline

    out = Path(config.output_dir)
    results: list[dict[str, Any]] = []
    references: dict[str, dict[str, float]] = {}
    for world, noise in worlds(config):
        world_dir = out / world
        write_world(world_dir, config, noise)
        position = position_baseline(world_dir / "world" / "VisualProcessBench")
        references[world] = {"position_auc": position["auc"], "position_overall": position["overall"]}
        if config.bon_questions:
            from mprm_hf.bon import pool_references
            from mprm_hf.data.synthetic import BON_DIR

            pool = pool_references(world_dir / "world" / BON_DIR, BON_N)
            references[world].update({f"bon_{name}": value for name, value in pool.items()})
        runs = plan(config, world)
        full_runs: dict[int, dict[str, Any]] = {}
        for spec in tqdm(runs, desc=f"sweep {world}", unit="run", disable=not progress):
            run_dir = world_dir / "runs" / run_name(spec)
            if spec["selector"] == "entropy" and spec["params"].get("model") == FULL_DATA_MODEL:
                spec["params"] = {
                    **spec["params"],
                    "model": str(
                        world_dir
                        / "runs"
                        / run_name({**spec, "selector": FULL, "fraction": 1.0, "compute": "single_pass"})
                        / "model"
                    ),
                }
            if spec["compute"] == "equal_steps":
                spec["max_steps"] = full_runs[spec["seed"]]["optimizer_steps"]
            result = run_one(run_dir, world_dir, config, spec)
            if spec["selector"] == FULL:
                full_runs[spec["seed"]] = result
            results.append(result)
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    write_text_atomic(out / "references.json", json.dumps(references, indent=2) + "\n")
    write_text_atomic(out / "results.md", results_table(results, references))
    for world in references:
        for policy in config.compute:
            plot_results(results, references[world], world, policy, out / f"plot-{world}-{policy}.png")
    return results


def _spread(values: list[float]) -> tuple[float, float]:
    array = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if not len(array):
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and seed spread of every metric, per world, compute policy, selector and fraction."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in results:
        groups[(row["world"], row["compute"], row["selector"], row["fraction"])].append(row)
    summary = []
    for (world, compute, selector, fraction), rows in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3], kv[0][2])
    ):
        entry = {
            "world": world,
            "compute": compute,
            "selector": selector,
            "fraction": fraction,
            "seeds": len(rows),
        }
        for key in (
            "rollouts",
            "steps",
            "optimizer_steps",
            "tokens",
            "train_s",
            "auc",
            "overall",
            "overall_calibrated",
            "oracle_overall",
            "bon",
        ):
            entry[key] = _spread([row.get(key) for row in rows])
        summary.append(entry)
    return summary


def results_table(results: list[dict[str, Any]], references: dict[str, dict[str, float]]) -> str:
    """The markdown table: scores in %, mean ± seed standard deviation."""

    def pct(pair: tuple[float, float]) -> str:
        mean, std = pair
        return "-" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"

    lines = []
    for world, ref in references.items():
        lines.append(
            f"### World `{world}`\n\nPosition-only scorer (1 - j/n): AUC {100 * ref['position_auc']:.1f}, "
            f"overall at 0.5 {100 * ref['position_overall']:.1f}. Chance: overall 50."
            + (
                f" Best-of-{BON_N} on the world's pool: random choice {100 * ref['bon_random']:.1f}, "
                f"majority vote {100 * ref['bon_majority']:.1f}, oracle {100 * ref['bon_oracle']:.1f}."
                if "bon_random" in ref
                else ""
            )
            + "\n"
        )
        lines.append(
            "| compute | selector | fraction | seeds | rollouts | optimizer steps | train s | overall@0.5 | "
            f"overall (calibrated) | oracle | AUC | BoN@{BON_N} ({BON_AGGREGATE}) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for entry in summarise([r for r in results if r["world"] == world]):
            lines.append(
                f"| {entry['compute']} | {entry['selector']} | {entry['fraction']:g} | {entry['seeds']} | "
                f"{entry['rollouts'][0]:.0f} | {entry['optimizer_steps'][0]:.0f} | {entry['train_s'][0]:.0f} | "
                f"{pct(entry['overall'])} | {pct(entry['overall_calibrated'])} | {pct(entry['oracle_overall'])} | {pct(entry['auc'])} | {pct(entry['bon'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_results(
    results: list[dict[str, Any]], reference: dict[str, float], world: str, compute: str, path: Path
) -> None:
    """Calibrated overall F1, AUC and (with a pool) best-of-N accuracy against the fraction of rollouts, a
    line per selector with the seed spread; full data, the position-only scorer and chance (for best-of-N:
    random choice and majority vote) as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = [
        e
        for e in summarise([r for r in results if r["world"] == world])
        if e["compute"] in {compute, "single_pass"}
    ]
    full = [e for e in summary if e["selector"] == FULL]
    panels = [
        ("overall_calibrated", "overall F1 (calibrated threshold)", reference["position_overall"], 0.5),
        ("auc", "ROC-AUC", reference["position_auc"], 0.5),
    ]
    if "bon_random" in reference:
        panels.append(("bon", f"best-of-{BON_N} accuracy ({BON_AGGREGATE} step reward)", None, None))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for axis, (key, title, position, chance) in zip(axes, panels, strict=True):
        for selector in sorted({e["selector"] for e in summary if e["selector"] != FULL}):
            rows = sorted(
                (e for e in summary if e["selector"] == selector and e["compute"] == compute),
                key=lambda e: e["fraction"],
            )
            if rows:
                axis.errorbar(
                    [e["fraction"] for e in rows],
                    [100 * e[key][0] for e in rows],
                    yerr=[100 * e[key][1] for e in rows],
                    marker="o",
                    capsize=3,
                    label=selector,
                )
        if full:
            axis.axhline(100 * full[0][key][0], color="black", linewidth=1.5, label="full data")
        if key == "bon":
            axis.axhline(100 * reference["bon_majority"], color="grey", linestyle="--", label="majority vote")
            axis.axhline(100 * reference["bon_random"], color="grey", linestyle=":", label="random choice")
            axis.legend(fontsize=8)
        else:
            axis.axhline(100 * position, color="grey", linestyle="--", label="position only")
            axis.axhline(100 * chance, color="grey", linestyle=":", label="chance")
        axis.set_xscale("log")
        axis.set_xlabel("fraction of rollouts (per source)")
        axis.set_ylabel("%")
        axis.set_title(title)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"world {world}, compute: {compute.replace('_', ' ')}")
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    write_bytes_atomic(path, image.getvalue())


def parse_args(argv: Sequence[str]) -> SweepConfig:
    """The sweep recipe (required) and the flags that override it; `--selectors NAME ...` keeps those of
    the recipe's selectors (with their parameters)."""
    from mprm_hf.recipes import RecipeParser

    parser = RecipeParser(
        (SweepConfig,), prog="mprm-hf sweep", description=__doc__.splitlines()[0].split(": ", 1)[-1]
    )
    (config,) = parser.parse(argv)
    if parser.recipe is None:
        raise MPRMError("a sweep needs its recipe: --config RECIPE.yaml (e.g. recipes/sweeps/tiny.yaml)")
    grid = parser.get_default("selectors")
    if isinstance(config.selectors, list) and isinstance(grid, dict):
        missing = sorted(set(config.selectors) - set(grid))
        if missing:
            raise MPRMError(f"--selectors: {', '.join(missing)} not in the recipe ({', '.join(grid)})")
        config.selectors = {name: grid[name] for name in config.selectors}
    config.check(parser.recipe)
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(list(sys.argv[1:] if argv is None else argv))
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(config.output_dir) / "sweep.json", json.dumps(asdict(config), indent=2) + "\n")
    results = run_sweep(config)
    print((Path(config.output_dir) / "results.md").read_text(encoding="utf-8"))
    print(
        f"{len(results)} runs; results in {config.output_dir}/results.jsonl, plots {config.output_dir}/plot-*.png"
    )
    return 0
