"""`mprm-hf quickstart`: the product's claim, end to end on the embedded default (what `make demo` runs).

Writes the synthetic world, selects BIS-10% (alpha 0.2), random-10% and full data, trains the tiny PRM on
each in a single pass, scores each on the world's VisualProcessBench (at 0.5, and at a threshold calibrated
on a benchmark of another seed), prints the table and one sentence on what it means, compares the three
PRMs by best-of-N on the world's candidate pool against majority vote and random choice (mprm_hf.bon),
saves the plots, stages the best subset and its checkpoint as Hub folders, and says how to open the Space
on the trained PRMs.
It is a small `mprm-hf sweep` (mprm_hf.sweep), so its runs resume and skip like a sweep's.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from mprm_hf.bon import DEFAULT_N, format_report, run_bon
from mprm_hf.embedded import BIS_ALPHA, BIS_TOP_RATIO, QUICKSTART_OUTPUT, trained_model
from mprm_hf.sweep import (
    BON_AGGREGATE,
    BON_N,
    FULL,
    SweepConfig,
    plot_results,
    run_sweep,
    summarise,
)

DEFAULT_OUTPUT = str(QUICKSTART_OUTPUT)
DEFAULT_BON_QUESTIONS = 128
BON_LABELS = {
    "bis": f"BIS-{100 * BIS_TOP_RATIO:g}%",
    "random": f"random-{100 * BIS_TOP_RATIO:g}%",
    FULL: "full data",
}


def quickstart_config(
    output_dir: str,
    seed: int,
    rollouts: int | None = None,
    max_steps: int | None = None,
    bon_questions: int = DEFAULT_BON_QUESTIONS,
) -> SweepConfig:
    return SweepConfig(
        bon_questions=bon_questions,
        output_dir=output_dir,
        rollouts=rollouts,
        train_args=[] if max_steps is None else ["--max_steps", str(max_steps)],
        world_seed=0,
        fractions=[BIS_TOP_RATIO],
        selectors={"bis": {"alpha": BIS_ALPHA}, "random": {}},
        full_data=True,
        seeds=[seed],
        compute=["single_pass"],
    )


def claim_sentence(summary: list[dict[str, Any]]) -> str:
    """What the table means, in one sentence: each subset's share of full data's calibrated F1 and compute."""
    by_selector = {entry["selector"]: entry for entry in summary}
    full = by_selector[FULL]

    def share(entry: dict[str, Any], key: str) -> float:
        return 100 * entry[key][0] / full[key][0] if full[key][0] else math.nan

    bis, random = by_selector["bis"], by_selector["random"]
    return (
        f"BIS-{100 * BIS_TOP_RATIO:g}% reached {share(bis, 'overall_calibrated'):.0f}% of full data's calibrated F1 "
        f"with {share(bis, 'rollouts'):.0f}% of the rollouts and {share(bis, 'optimizer_steps'):.0f}% of the training "
        f"compute (optimizer steps); random-{100 * BIS_TOP_RATIO:g}% reached {share(random, 'overall_calibrated'):.0f}% "
        "(one seed: the README's 3-seed sweep gives the spread)."
    )


def format_table(summary: list[dict[str, Any]], reference: dict[str, float]) -> str:
    """The runs, then the lines to judge them by: a scorer that uses only the step's position in the
    trace (1 - j / n, no model) and chance."""
    header = f"{'selector':<10}{'fraction':>9}{'rollouts':>10}{'steps':>8}{'train s':>9}{'F1@0.5':>8}{'F1 cal.':>9}{'AUC':>7}"
    rows = [header, "-" * len(header)]
    for entry in summary:
        rows.append(
            f"{entry['selector']:<10}{entry['fraction']:>9g}{entry['rollouts'][0]:>10.0f}{entry['steps'][0]:>8.0f}"
            f"{entry['train_s'][0]:>9.0f}{100 * entry['overall'][0]:>8.1f}{100 * entry['overall_calibrated'][0]:>9.1f}"
            f"{100 * entry['auc'][0]:>7.1f}"
        )
    rows.append("-" * len(header))
    position = "position-only scorer (1 - j/n, no model)"
    rows.append(
        f"{position:<46}{100 * reference['position_overall']:>8.1f}{'':>9}{100 * reference['position_auc']:>7.1f}"
    )
    rows.append(f"{'chance':<46}{'':>8}{'':>9}{50.0:>7.1f}")
    return "\n".join(rows)


def bon_sentence(report: dict[str, Any]) -> str:
    """What the best-of-N comparison says at N = 8 by the mean step reward, with paired 95% intervals."""
    n, how = str(BON_N), BON_AGGREGATE
    overall = report["overall"]
    full = overall["models"][BON_LABELS[FULL]][how][n]

    def points(entry: dict[str, Any], key: str) -> str:
        low, high = entry["ci"]
        return f"{100 * entry[key]:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"

    pair = overall["pairs"][f"{BON_LABELS['bis']} - {BON_LABELS['random']}"][how][n]
    return (
        f"Best-of-{n} by {how} step reward: full data {100 * full['accuracy']:.1f}% against majority vote "
        f"{points(full['vs_majority'], 'difference')} and random choice {points(full['vs_random'], 'difference')}; "
        f"{BON_LABELS['bis']} against {BON_LABELS['random']} {points(pair, 'difference')} "
        "(paired 95% intervals; one holding 0 measures no difference)."
    )


def stage_best(config: SweepConfig, summary: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Stage the better of the two 10% subsets (by calibrated F1) as a Hub folder; its trained model folder
    already holds its card and is pushed as it is."""
    from mprm_hf.selection.cli import main as select_main

    best = max((e for e in summary if e["selector"] != FULL), key=lambda e: e["overall_calibrated"][0])
    world = Path(config.output_dir) / "default"
    subset = Path(config.output_dir) / f"{best['selector']}-{100 * best['fraction']:g}"
    params = ["--alpha", str(BIS_ALPHA)] if best["selector"] == "bis" else ["--seed", str(config.seeds[0])]
    select_argv = [
        "--annotations", str(world / "world"), "--method", best["selector"], "--top-ratio", str(best["fraction"]),
        *params, "--format", "arrow", "--output", str(subset), "--dry-run", "--quiet",
    ]  # fmt: skip
    select_main(select_argv)
    return subset.with_name(subset.name + ".hub"), trained_model(
        config.output_dir, best["selector"], config.seeds[0]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mprm-hf quickstart", description=__doc__.splitlines()[0].split(": ", 1)[-1]
    )
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT, help="where everything is written")
    parser.add_argument("--seed", type=int, default=0, help="selection and training seed")
    parser.add_argument("--rollouts", type=int, help="corpus size (default: the synth default)")
    parser.add_argument("--max-steps", type=int, help="cap every training run (a smoke test)")
    parser.add_argument(
        "--bon-questions",
        type=int,
        default=DEFAULT_BON_QUESTIONS,
        help=f"questions of the best-of-N pool (16 candidates each; default {DEFAULT_BON_QUESTIONS}; 0: none)",
    )
    args = parser.parse_args(argv)
    config = quickstart_config(args.output_dir, args.seed, args.rollouts, args.max_steps, args.bon_questions)
    results = run_sweep(config)
    summary = summarise(results)
    order = {"bis": 0, "random": 1, FULL: 2}
    summary.sort(key=lambda entry: order[entry["selector"]])
    plot = Path(args.output_dir) / "quickstart.png"
    references = json.loads((Path(args.output_dir) / "references.json").read_text(encoding="utf-8"))
    plot_results(results, references["default"], "default", "single_pass", plot)
    from mprm_hf.data.synthetic import BON_DIR

    selectors = ("bis", "random", FULL)
    bon = None
    if args.bon_questions:
        bon = run_bon(
            [str(trained_model(args.output_dir, selector, args.seed)) for selector in selectors],
            Path(args.output_dir) / "default" / "world" / BON_DIR,
            Path(args.output_dir) / "bon",
            n_values=DEFAULT_N,
            labels=[BON_LABELS[selector] for selector in selectors],
            seed=args.seed,
            progress=False,
        )  # the rewards each sweep run cached for its best-of-8 are read back, not scored again
    subset_hub, model_hub = stage_best(config, summary)
    print("\n" + format_table(summary, references["default"]) + "\n")
    print(claim_sentence(summary))
    if bon is not None:
        print("\n" + format_report(bon, per_source=False) + "\n")
        print(bon_sentence(bon))
    bon_plot = (
        f", {Path(args.output_dir) / 'bon' / 'bon.png'} (best-of-N; all of it in bon.json)" if bon else ""
    )
    print(f"\nplots: {plot}{bon_plot}")
    print(f"ready for the Hub: {subset_hub} (subset + card), {model_hub} (model + card);")
    print(f"push them with: mprm-hf push {subset_hub} --repo-id OWNER/NAME (and the same for the model)")
    print(
        f"open the Space on a trained PRM: mprm-hf demo --model {trained_model(args.output_dir, seed=args.seed)}"
    )
    return 0
