"""Does the embedded default learn? The tiny recipe trained on the full data of a default-size synthetic
corpus, scored on its VisualProcessBench, against the targets of the learnability goal:

- training wall time <= 5 minutes;
- AUC >= 0.90;
- shuffling the pictures between benchmark traces costs >= 0.15 AUC (the model reads the picture);
- AUC >= the position-only scorer's (1 - j / n) + 0.15;
- oracle overall F1 >= 80.

The same figures for a model trained on the world's true labels (the truth sidecar `synth` writes) give the
ceiling of the world. Two controls: the base alone as a step scorer (its Yes/No answer to "Is it true that
<the step's claim>?", no PRM training), and the AUC on the benchmark traces whose pictures the base's
pretraining never drew (held-out scenes) against the rest. Every step runs through the `mprm-hf` commands a
user runs:

    python benchmarks/bench_learnability.py --work /tmp/learnability                  # the shipped base
    python benchmarks/bench_learnability.py --base random --work /tmp/learnability-random   # the ablation
    python benchmarks/bench_learnability.py --base outputs/tiny-base-no-verify --skip-truth  # another base
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-cpu" / "config.yaml"
TARGETS = {"train_s": 300.0, "auc": 0.90, "shuffle_cost": 0.15, "over_position": 0.15, "oracle": 0.80}


def run(*argv: str) -> None:
    from mprm_hf.cli import main

    code = main(list(argv))
    if code != 0:
        raise SystemExit(f"mprm-hf {' '.join(argv)} exited {code}")


def truth_subset(world: Path, full: Path, out: Path) -> None:
    """The full data with every step's label replaced by its hidden truth (training never sees it otherwise)."""
    import datasets

    from mprm_hf.data.synthetic import load_truth

    truth = load_truth(world)
    ds = datasets.load_from_disk(str(full))
    ds = ds.map(lambda row: {"labels": truth[row["id"]]}, desc="true labels")
    ds.save_to_disk(str(out))


def shuffled_benchmark(benchmark: Path, out: Path, seed: int) -> Path:
    """The benchmark with every trace's pictures taken from another trace with as many pictures."""
    import numpy as np

    records = [json.loads(line) for line in (benchmark / "test.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(seed)
    by_count: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        by_count.setdefault(len(record["image"]), []).append(index)
    images = [record["image"] for record in records]
    for group in by_count.values():
        shift = int(rng.integers(1, len(group))) if len(group) > 1 else 0
        for position, index in enumerate(group):
            records[index]["image"] = images[group[(position + shift) % len(group)]]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "images").symlink_to((benchmark / "images").resolve())
    (out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def scene_split(benchmark: Path, seed: int, n_traces: int) -> list[bool]:
    """Per benchmark trace: whether every picture is of a scene the base's pretraining never drew."""
    from mprm_hf.data.synthetic import simulate_benchmark
    from mprm_hf.pretrain import held_out_scene

    return [all(map(held_out_scene, record.scenes)) for record in simulate_benchmark(n_traces, seed)]


def split_auc(scores_file: Path, unseen: list[bool]) -> dict[str, float]:
    """AUC on the traces of held-out scenes and on the others (scores.jsonl lines are in benchmark order)."""
    from mprm_hf.evaluation import metrics_from_records, read_scores

    records = read_scores(scores_file)
    by_id = sorted(records, key=lambda record: int(record["id"].rsplit(":", 1)[-1]))
    return {
        name: metrics_from_records([r for r, u in zip(by_id, unseen, strict=True) if u == side])["auc"]
        for name, side in (("held_out_scenes", True), ("seen_scenes", False))
    }


def base_control(base: Path, benchmark: Path) -> dict:
    """The base alone as a step scorer: P(Yes) for "Is it true that <claim>?", 0.5 for a step with none."""
    from mprm_hf.data.synthetic import step_claim
    from mprm_hf.data.visualprocessbench import load_visualprocessbench
    from mprm_hf.evaluation import metrics_from_records, score_record
    from mprm_hf.modeling import load_model_and_processor
    from mprm_hf.pretrain import yes_probability
    from mprm_hf.step_format import load_image

    model, processor = load_model_and_processor(base)
    traces, _ = load_visualprocessbench(benchmark)
    pictures, questions, owners = [], [], []
    for index, (steps, images) in enumerate(zip(traces["steps"], traces["images"], strict=True)):
        loaded = [load_image(image, f"trace {index}") for image in images]
        for j, step in enumerate(steps):
            claim = step_claim(step)
            if claim is not None:
                pictures.append(loaded)
                questions.append(f"Is it true that {claim}?")
                owners.append((index, j))
    answered = dict(zip(owners, yes_probability(model, processor, pictures, questions), strict=True))
    records = [
        score_record(str(index), source, [answered.get((index, j), 0.5) for j in range(len(labels))], labels)
        for index, (source, labels) in enumerate(zip(traces["data_source"], traces["labels"], strict=True))
    ]
    return metrics_from_records(records)


def train_and_score(name: str, dataset: Path, args: argparse.Namespace, benchmarks: dict[str, Path]) -> dict:
    model = args.work / f"model-{name}"
    started = time.perf_counter()
    run(
        "train",
        str(RECIPE),
        "--dataset_name",
        str(dataset),
        "--output_dir",
        str(model),
        "--embedded_root",
        str(args.work / "embedded"),
        *(
            ["--embedded_base", args.base]
            if args.base in ("pretrained", "random")
            else ["--model_name_or_path", args.base]
        ),
        "--seed",
        str(args.train_seed),
        *args.train_args,
    )
    train_s = time.perf_counter() - started
    result = {"train_s": train_s}
    for kind, benchmark in benchmarks.items():
        out = args.work / f"eval-{name}-{kind}"
        shutil.rmtree(out, ignore_errors=True)
        run("evaluate", "--model", str(model), "--benchmark", str(benchmark), "--out", str(out))
        metrics = json.loads((out / "metrics.json").read_text())
        result[kind] = {key: metrics[key] for key in ("auc", "overall", "oracle_overall")}
        if kind == "bench":
            result["by_scene"] = split_auc(out / "scores.jsonl", args.unseen)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seed", type=int, default=4242, help="world seed (default 4242, a world no recipe was tuned on)"
    )
    parser.add_argument(
        "--base",
        default="pretrained",
        help="the base to fine-tune: 'pretrained' (shipped), 'random' (the same model, random weights) or "
        "the folder of another base (`mprm-hf pretrain` output)",
    )
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mprm-learnability"))
    parser.add_argument("--skip-truth", action="store_true", help="skip the true-label ceiling")
    parser.add_argument("train_args", nargs="*", help="extra `mprm-hf train` flags (after --)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    world = args.work / "world"
    run("synth", "--out", str(world), "--seed", str(args.seed))
    full = args.work / "full"
    shutil.rmtree(full, ignore_errors=True)
    run(
        "select",
        "--annotations",
        str(world),
        "--method",
        "full",
        "--format",
        "arrow",
        "--output",
        str(full),
        "--quiet",
    )
    benchmark = world / "VisualProcessBench"
    benchmarks = {
        "bench": benchmark,
        "shuffled": shuffled_benchmark(benchmark, args.work / "shuffled", args.seed),
    }
    from mprm_hf.evaluation import position_baseline

    position = position_baseline(benchmark)
    n_traces = sum(1 for _ in (benchmark / "test.jsonl").open())
    args.unseen = scene_split(benchmark, args.seed, n_traces)
    from mprm_hf.embedded import embedded_base

    base_folder = embedded_base("pretrained") if args.base == "pretrained" else Path(args.base)
    control = base_control(base_folder, benchmark) if args.base != "random" else None
    runs = {"MC labels": train_and_score("mc", full, args, benchmarks)}
    if not args.skip_truth:
        truth = args.work / "truth"
        shutil.rmtree(truth, ignore_errors=True)
        truth_subset(world, full, truth)
        runs["true labels"] = train_and_score("truth", truth, args, benchmarks)

    print(
        f"\nworld seed {args.seed}, {args.base} base; position-only scorer: AUC {position['auc']:.3f}, "
        f"oracle {position['oracle_overall']:.3f}; {sum(args.unseen)} of {n_traces} traces show scenes the "
        "base's pretraining held out"
    )
    if control is not None:
        print(
            f"the base alone (Yes/No to each step's claim, no PRM training): AUC {control['auc']:.3f}, "
            f"overall@0.5 {control['overall']:.3f}, oracle {control['oracle_overall']:.3f}"
        )
    header = (
        "| labels | train s | AUC | overall@0.5 | oracle | AUC shuffled | shuffle cost | over position "
        "| AUC held-out / seen scenes |"
    )
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for name, result in runs.items():
        bench, shuffled = result["bench"], result["shuffled"]
        cost = bench["auc"] - shuffled["auc"]
        over = bench["auc"] - position["auc"]
        print(
            f"| {name} | {result['train_s']:.0f} | {bench['auc']:.3f} | {bench['overall']:.3f} | "
            f"{bench['oracle_overall']:.3f} | {shuffled['auc']:.3f} | {cost:+.3f} | {over:+.3f} | "
            f"{result['by_scene']['held_out_scenes']:.3f} / {result['by_scene']['seen_scenes']:.3f} |"
        )
    mc = runs["MC labels"]
    checks = {
        "train_s": mc["train_s"] <= TARGETS["train_s"],
        "auc": mc["bench"]["auc"] >= TARGETS["auc"],
        "shuffle_cost": mc["bench"]["auc"] - mc["shuffled"]["auc"] >= TARGETS["shuffle_cost"],
        "over_position": mc["bench"]["auc"] - position["auc"] >= TARGETS["over_position"],
        "oracle": mc["bench"]["oracle_overall"] >= TARGETS["oracle"],
    }
    print("targets (MC labels): " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in checks.items()))
    summary = {
        "seed": args.seed,
        "base": args.base,
        "position": position,
        "base_alone": control,
        "runs": runs,
    }
    (args.work / "learnability.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
