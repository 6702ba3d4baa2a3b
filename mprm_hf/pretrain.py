"""`mprm-hf pretrain RECIPE.yaml`: build the tiny base VLM from nothing, by dense VQA over fresh scenes.

Every real PRM starts from a pretrained vision-language model. The embedded default's base is made here: the
tiny Qwen2-VL learns, by next-token prediction on the answers only, to answer questions about pictures of the
synthetic world (how many, what colour, which cell, is it there, and "is it true that <claim>?"). Each
training sequence is one picture and a chat of `questions_per_scene` questions and answers. The base never
sees a reasoning trace, a step label or an MC score.

Scenes come from a seed stream of their own (`PRETRAIN_STREAM`): no world `mprm-hf synth` writes, under any
seed, draws from it. A tenth of all scenes (by a hash of the scene, `held_out_scene`) is never trained on;
the VQA evaluation asks about those only, and again with every picture swapped for another scene's, so
`vqa_eval.json` tells what the model reads off the picture from what it guesses from the question.

    mprm-hf pretrain recipes/tiny-base/config.yaml --output_dir outputs/tiny-base [--max_steps N]

The output folder loads with plain transformers (`AutoModelForImageTextToText`, `AutoProcessor`).
"""

from __future__ import annotations

import json
import logging
import platform
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction, Trainer, TrainingArguments

from mprm_hf.errors import MPRMError

logger = logging.getLogger(__name__)

# The seed stream of pretraining scenes: a tag no `synth` stream uses (those are keyed by source names).
PRETRAIN_STREAM = zlib.crc32(b"mprm-hf pretrain scenes")
# One scene in HELD_OUT_MODULUS (by the CRC of its cell codes) is kept out of training for evaluation.
HELD_OUT_MODULUS = 10

VERIFY = "verify"  # "Is it true that <claim>?" with the world's own claim generator; answers Yes / No
CELL = "cell"  # "What is in the top left cell?": "a red circle" or "nothing"
# The world's own question kinds (mprm_hf.data.synthetic.make_question), answered as the world answers them.
WORLD_KINDS = ("count_colour", "count_all", "colour_of", "place_of", "exists", "choice")
QUESTION_KINDS = (VERIFY, CELL, *WORLD_KINDS)
# Of the verification questions, the share that ask about a question's concluding claim ("there are three
# shapes in all", "the circle is blue, which is option B"), the rest about the world's step claims.
CONCLUSION_SHARE = 0.25
# The shape of the shipped base (`tiny_model_config` keywords): PretrainConfig's defaults, and the shape of
# the random-init ablation (`embedded_base("random")`), so the two differ in their weights only.
BASE_SHAPE = {"text_layers": 4, "width": 128, "kv_heads": None, "vision_depth": 1}
DEFAULT_MIX = {
    VERIFY: 0.45,
    CELL: 0.15,
    "count_colour": 0.08,
    "count_all": 0.04,
    "colour_of": 0.08,
    "place_of": 0.08,
    "exists": 0.08,
    "choice": 0.04,
}


def held_out_scene(scene: Sequence[int]) -> bool:
    """Whether a scene belongs to the evaluation tenth, which training never draws."""
    return zlib.crc32(bytes(scene)) % HELD_OUT_MODULUS == 0


def example_rng(seed: int, split: str, index: int) -> random.Random:
    """The generator of one example: a function of (seed, split, index) only, so an example is the same
    whatever the batch size, the workers or the order in which the Trainer asks for it."""
    state = np.random.SeedSequence([PRETRAIN_STREAM, seed, zlib.crc32(split.encode()), index]).generate_state(
        2
    )
    return random.Random(int(state[0]) << 32 | int(state[1]))


def draw_scene_for(split: str, rng: random.Random) -> tuple[int, ...]:
    """A scene of the split: the world's scene generator, redrawn until the scene is on the split's side."""
    from mprm_hf.data.synthetic import random_scene

    while True:
        scene = random_scene(rng)
        if held_out_scene(scene) == (split == "eval"):
            return scene


def ask(kind: str, scene: Sequence[int], rng: random.Random) -> tuple[str, str]:
    """One question of `kind` about `scene` and its answer."""
    from mprm_hf.data import synthetic

    if kind == VERIFY:
        truth = rng.random() < 0.5
        if rng.random() < CONCLUSION_SHARE:  # the claim that concludes a question (a final step's claim)
            question = synthetic.make_question(rng.choice(WORLD_KINDS), [tuple(scene)], rng)
            stated = question.answer if truth else rng.choice(question.wrong_answers)
            claim = question.conclusions[stated]
        else:
            claim = synthetic.make_claim(tuple(scene), truth, rng)
        return f"Is it true that {claim}?", "Yes" if truth else "No"
    if kind == CELL:
        position = int(rng.random() * len(synthetic.POSITIONS))
        code = scene[position]
        answer = (
            "nothing"
            if code == synthetic.EMPTY
            else f"a {synthetic.COLOUR_NAMES[synthetic.cell_colour(code)]} {synthetic.SHAPES[synthetic.cell_shape(code)]}"
        )
        return f"What is in the {synthetic.POSITIONS[position]} cell?", answer
    question = synthetic.make_question(kind, [tuple(scene)], rng)
    return question.text, question.answer


def check_mix(mix: dict[str, float]) -> dict[str, float]:
    """The question mix as probabilities; unknown kinds and negative or all-zero weights are refused."""
    unknown = sorted(set(mix) - set(QUESTION_KINDS))
    if unknown:
        raise MPRMError(f"question_mix: unknown kind {unknown[0]!r} (kinds: {', '.join(QUESTION_KINDS)})")
    if any(float(weight) < 0 for weight in mix.values()) or sum(map(float, mix.values())) <= 0:
        raise MPRMError("question_mix: weights must be non-negative with a positive sum")
    total = sum(map(float, mix.values()))
    return {kind: float(weight) / total for kind, weight in mix.items() if float(weight) > 0}


class VQADataset(torch.utils.data.Dataset):
    """`size` generated examples of one split: a scene, and `questions` (kind, question, answer) about it.

    With `shuffled_pictures`, example i shows the picture of example i + 1 (another held-out scene) while
    asking the same questions: the control that says how much of the accuracy comes from the picture."""

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        split: str,
        mix: dict[str, float],
        questions_per_scene: int,
        shuffled_pictures: bool = False,
    ) -> None:
        self.size, self.seed, self.split = size, seed, split
        self.kinds, self.weights = zip(*check_mix(mix).items(), strict=True)
        self.questions_per_scene = questions_per_scene
        self.shuffled_pictures = shuffled_pictures

    def __len__(self) -> int:
        return self.size

    def _scene(self, index: int) -> tuple[random.Random, tuple[int, ...]]:
        rng = example_rng(self.seed, self.split, index)
        return rng, draw_scene_for(self.split, rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng, scene = self._scene(index)
        kinds = rng.choices(self.kinds, weights=self.weights, k=self.questions_per_scene)
        asked = [ask(kind, scene, rng) for kind in kinds]
        picture = self._scene((index + 1) % self.size)[1] if self.shuffled_pictures else scene
        return {
            "scene": list(picture),
            "kinds": list(kinds),
            "questions": [q for q, _ in asked],
            "answers": [a for _, a in asked],
        }


def vqa_messages(questions: Sequence[str], answers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The chat of one picture: the picture opens the first user turn; each question is a user turn, each
    answer an assistant turn. Without answers, one question and no answer (for generation)."""
    messages: list[dict[str, Any]] = []
    for index, question in enumerate(questions):
        content: list[dict[str, str]] = [{"type": "image"}] if index == 0 else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
        if answers is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[index]}]})
    return messages


def answer_spans(ids: Sequence[int], header: Sequence[int], end_id: int) -> list[tuple[int, int]]:
    """[start, end) of every assistant answer in `ids`: after each assistant header, up to and including the
    end-of-turn token (so the model also learns to stop)."""
    spans, width, index = [], len(header), 0
    while index <= len(ids) - width:
        if list(ids[index : index + width]) == list(header):
            start = index + width
            end = start
            while end < len(ids) and ids[end] != end_id:
                end += 1
            spans.append((start, min(end + 1, len(ids))))
            index = end
        else:
            index += 1
    return spans


class VQACollator:
    """Pictures drawn from the scene codes, the chat rendered with the processor's own template, and labels
    on the answer tokens only (-100 elsewhere)."""

    def __init__(self, processor: Any) -> None:
        from mprm_hf.step_format import assistant_header_ids

        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.header = assistant_header_ids(processor)
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from mprm_hf.data.synthetic import draw_scene

        texts = [
            self.processor.apply_chat_template(vqa_messages(e["questions"], e["answers"]), tokenize=False)
            for e in examples
        ]
        batch = self.processor(
            text=texts,
            images=[draw_scene(tuple(e["scene"])) for e in examples],
            padding="longest",
            padding_side="right",
            add_special_tokens=False,
            return_tensors="pt",
        )
        labels = torch.full_like(batch["input_ids"], -100)
        for row, ids in enumerate(batch["input_ids"].tolist()):
            spans = answer_spans(ids, self.header, self.end_id)
            if len(spans) != len(examples[row]["answers"]):
                raise MPRMError(
                    f"VQA example {row}: {len(spans)} answers found in its encoding, expected "
                    f"{len(examples[row]['answers'])}"
                )
            for start, end in spans:
                labels[row, start:end] = batch["input_ids"][row, start:end]
        batch["labels"] = labels
        return batch


def answer_correct(predictions: np.ndarray, labels: np.ndarray) -> list[list[bool]]:
    """Per row, per answer: whether every answer token (its end-of-turn token aside) is the model's top
    prediction, teacher-forced. `predictions` are arg-max token ids at each position."""
    shifted_pred, shifted_labels = predictions[:, :-1], labels[:, 1:]
    rows = []
    for pred, gold in zip(shifted_pred, shifted_labels, strict=True):
        marked = np.flatnonzero(gold != -100)
        if not len(marked):
            rows.append([])
            continue
        breaks = np.flatnonzero(np.diff(marked) > 1) + 1
        rows.append([bool((pred[span[:-1]] == gold[span[:-1]]).all()) for span in np.split(marked, breaks)])
    return rows


def accuracy_by_kind(correct: list[list[bool]], kinds: list[list[str]]) -> dict[str, float]:
    """Accuracy of every question kind and over all answers."""
    hits, seen = Counter(), Counter()
    for row_correct, row_kinds in zip(correct, kinds, strict=True):
        if len(row_correct) != len(row_kinds):
            raise MPRMError(f"VQA evaluation: {len(row_correct)} answers scored, {len(row_kinds)} asked")
        for ok, kind in zip(row_correct, row_kinds, strict=True):
            hits[kind] += ok
            seen[kind] += 1
    result = {f"accuracy_{kind}": hits[kind] / seen[kind] for kind in QUESTION_KINDS if seen[kind]}
    result["accuracy"] = sum(hits.values()) / max(sum(seen.values()), 1)
    return result


def argmax_logits(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """`preprocess_logits_for_metrics`: keep the arg-max token per position, not [batch, length, vocab]."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


@torch.no_grad()
def yes_probability(
    model: Any,
    processor: Any,
    pictures: Sequence[Sequence[Any]],
    questions: Sequence[str],
    batch_size: int = 64,
) -> list[float]:
    """The base's P(Yes) against P(No) as its answer to each yes/no question about its pictures (PIL images):
    how the base alone scores a claim, with no PRM training."""
    tokenizer = getattr(processor, "tokenizer", processor)
    yes, no = (tokenizer.convert_tokens_to_ids(word) for word in ("Yes", "No"))
    model.eval()
    scores: list[float] = []
    for start in range(0, len(questions), batch_size):
        chunk = range(start, min(start + batch_size, len(questions)))
        texts = []
        for index in chunk:
            images = [{"type": "image"} for _ in pictures[index]]
            message = [{"role": "user", "content": [*images, {"type": "text", "text": questions[index]}]}]
            texts.append(processor.apply_chat_template(message, tokenize=False, add_generation_prompt=True))
        batch = processor(
            text=texts,
            images=[image for index in chunk for image in pictures[index]] or None,
            padding="longest",
            padding_side="right",
            add_special_tokens=False,
            return_tensors="pt",
        )
        last = batch["attention_mask"].sum(-1) - 1
        logits = model(**batch).logits[torch.arange(len(texts)), last][:, [yes, no]]
        scores += logits.float().softmax(-1)[:, 0].tolist()
    return scores


@dataclass
class PretrainConfig(TrainingArguments):
    """Arguments for `PretrainTrainer`: the base model's shape, the VQA data, and `TrainingArguments`
    (defaults changed below for a small model trained from scratch on a CPU)."""

    # ---- the model -------------------------------------------------------------------------------------
    text_layers: int = field(
        default=BASE_SHAPE["text_layers"], metadata={"help": "Decoder layers of the language model."}
    )
    width: int = field(
        default=BASE_SHAPE["width"],
        metadata={"help": "Hidden size of the language model (a multiple of the 32-wide heads)."},
    )
    kv_heads: int | None = field(
        default=None, metadata={"help": "Key/value heads (grouped-query attention). None: half the heads."}
    )
    vision_depth: int = field(
        default=BASE_SHAPE["vision_depth"], metadata={"help": "Blocks of the vision encoder."}
    )
    freeze_vision_tower: bool = field(
        default=True,
        metadata={"help": "Freeze the random vision encoder (its projector still trains): measured better."},
    )
    vision_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the vision encoder (projector excluded). None: learning_rate."},
    )
    # ---- the data --------------------------------------------------------------------------------------
    questions_per_scene: int = field(default=8, metadata={"help": "Questions (chat turns) per picture."})
    question_mix: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_MIX),
        metadata={"help": f"Share of each question kind ({', '.join(QUESTION_KINDS)}), a mapping."},
    )
    eval_scenes: int = field(
        default=512, metadata={"help": "Held-out scenes the VQA evaluation asks about (and again, shuffled)."}
    )
    # ---- defaults changed from TrainingArguments ---------------------------------------------------------
    output_dir: str | None = field(
        default="outputs/tiny-base", metadata={"help": "Where the base is written."}
    )
    max_steps: int = field(default=6000, metadata={"help": "Optimizer steps (the data is generated)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=200, metadata={"help": "Linear warmup steps (or a ratio in [0, 1))."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Pictures per batch."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Pictures per evaluation batch."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to run the VQA evaluation."})
    eval_steps: float | None = field(default=1000, metadata={"help": "Evaluate every N steps."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})
    save_strategy: str = field(
        default="no", metadata={"help": "Checkpoints (the final model is always saved)."}
    )
    use_cpu: bool = field(default=True, metadata={"help": "Train on the CPU."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loader worker processes."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "The collator reads every column."})

    def __post_init__(self) -> None:
        self.question_mix = check_mix(dict(self.question_mix))
        if self.max_steps <= 0:
            raise MPRMError("PretrainConfig: max_steps must be positive (the data is generated per step)")
        if self.questions_per_scene <= 0 or self.eval_scenes <= 0:
            raise MPRMError("PretrainConfig: questions_per_scene and eval_scenes must be positive")
        super().__post_init__()

    def model_shape(self) -> dict[str, Any]:
        return {
            "text_layers": self.text_layers,
            "width": self.width,
            "kv_heads": self.kv_heads,
            "vision_depth": self.vision_depth,
        }


class PretrainTrainer(Trainer):
    """`Trainer` with the VQA collator, its held-out evaluation (real and shuffled pictures), and a learning
    rate of its own for the vision encoder."""

    def __init__(self, model: Any, args: PretrainConfig, processing_class: Any, **kwargs: Any) -> None:
        from mprm_hf.prm_trainer import vision_tower_parameters

        self.vision_parameters = {id(p) for _, p in vision_tower_parameters(model)}
        if args.freeze_vision_tower:
            for _, parameter in vision_tower_parameters(model):
                parameter.requires_grad_(False)
        world = max(args.world_size, 1)
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
        splits = {"split": "eval", "mix": args.question_mix, "questions_per_scene": args.questions_per_scene}
        evaluation = {
            "vqa": VQADataset(args.eval_scenes, seed=args.seed, **splits),
            "vqa_shuffled": VQADataset(args.eval_scenes, seed=args.seed, shuffled_pictures=True, **splits),
        }
        self.eval_kinds = [evaluation["vqa"][i]["kinds"] for i in range(args.eval_scenes)]
        super().__init__(
            model=model,
            args=args,
            data_collator=VQACollator(processing_class),
            train_dataset=VQADataset(
                args.max_steps * batch,
                seed=args.seed,
                split="train",
                mix=args.question_mix,
                questions_per_scene=args.questions_per_scene,
            ),
            eval_dataset=evaluation,
            processing_class=processing_class,
            compute_metrics=self.vqa_metrics,
            preprocess_logits_for_metrics=argmax_logits,
            **kwargs,
        )

    def vqa_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        return accuracy_by_kind(answer_correct(prediction.predictions, prediction.label_ids), self.eval_kinds)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """AdamW as the Trainer builds it, with the vision encoder in groups of its own learning rate."""
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        rate = self.args.vision_learning_rate
        if rate is None or self.args.freeze_vision_tower:
            return optimizer
        groups = []
        for group in optimizer.param_groups:
            vision = [p for p in group["params"] if id(p) in self.vision_parameters]
            rest = [p for p in group["params"] if id(p) not in self.vision_parameters]
            groups += [{**group, "params": rest}] if rest else []
            groups += [{**group, "params": vision, "lr": rate}] if vision else []
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer


def parse_args(argv: Sequence[str]) -> PretrainConfig:
    from mprm_hf.recipes import parse_recipe

    (config,) = parse_recipe(
        (PretrainConfig,), argv, prog="mprm-hf pretrain", description=__doc__.splitlines()[0]
    )
    return config


def machine() -> str:
    """The machine a run was made on, as a card and `vqa_eval.json` name it."""
    import os

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (
        f"{device}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads "
        f"({platform.machine()}, {platform.system()}, torch {torch.__version__})"
    )


def vqa_report(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """Held-out accuracy per question kind, beside the same questions with the pictures shuffled."""
    return {
        kind: {
            "accuracy": metrics[f"eval_vqa_accuracy_{kind}"],
            "shuffled_pictures": metrics[f"eval_vqa_shuffled_accuracy_{kind}"],
        }
        for kind in QUESTION_KINDS
        if f"eval_vqa_accuracy_{kind}" in metrics
    } | {
        "all": {
            "accuracy": metrics["eval_vqa_accuracy"],
            "shuffled_pictures": metrics["eval_vqa_shuffled_accuracy"],
        }
    }


def learning_curve(log_history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """[step, value] series of the training loss and of each held-out accuracy, from the Trainer's log (one
    value per step: the final evaluation repeats the last scheduled one)."""
    curves: dict[str, dict[int, float]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key == "loss" or key.startswith(("eval_vqa_accuracy", "eval_vqa_shuffled_accuracy")):
                curves.setdefault(key, {})[entry["step"]] = value
    return {key: [[step, value] for step, value in series.items()] for key, series in curves.items()}


def plot_learning_curve(curves: dict[str, list[list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mprm_hf.fileio import save_figure_atomic

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if "loss" in curves:
        steps, values = zip(*curves["loss"], strict=True)
        loss_axis.plot(steps, values, color="black", linewidth=1)
    loss_axis.set(title="training loss (answer tokens)", xlabel="optimizer step", yscale="log")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, kind in enumerate(("all", *QUESTION_KINDS)):
        key = "eval_vqa_accuracy" + ("" if kind == "all" else f"_{kind}")
        shuffled = key.replace("eval_vqa_", "eval_vqa_shuffled_")
        if key not in curves:
            continue
        colour = "black" if kind == "all" else colours[index % len(colours)]
        steps, values = zip(*curves[key], strict=True)
        accuracy_axis.plot(steps, values, color=colour, label=kind, linewidth=2 if kind == "all" else 1)
        if shuffled in curves:
            steps, values = zip(*curves[shuffled], strict=True)
            accuracy_axis.plot(steps, values, color=colour, linestyle=":", linewidth=1)
    accuracy_axis.set(
        title="held-out VQA accuracy (dotted: pictures shuffled)", xlabel="optimizer step", ylim=(0, 1)
    )
    accuracy_axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=110)
    plt.close(figure)


def render_base_card(record: dict[str, Any]) -> str:
    """The base's model card: what it is, how it was made, and its held-out VQA accuracy."""
    from huggingface_hub import ModelCard, ModelCardData

    from mprm_hf.hub import ensure_no_secrets, template_path

    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license="apache-2.0",
        tags=["mprm-hf", "tiny", "qwen2_vl", "synthetic"],
    )
    card = ModelCard.from_template(card_data, template_path=template_path("base_model_card.md"), **record)
    text = str(card)
    ensure_no_secrets(text, where="base model card")
    return text


def write_base(trainer: PretrainTrainer, out: Path, record: dict[str, Any]) -> Path:
    """The model, its processor, `vqa_eval.json`, the learning curve and the card, as one folder swap."""
    from mprm_hf.fileio import atomic_output

    with atomic_output(out, folder=True) as staging:
        trainer.model.save_pretrained(staging)
        trainer.processing_class.save_pretrained(staging)
        (staging / "vqa_eval.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        plot_learning_curve(record["learning_curve"], staging / "learning_curve.png")
        (staging / "README.md").write_text(render_base_card(record), encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    from mprm_hf.hub import portable_command
    from mprm_hf.modeling import count_parameters, create_tiny_model

    model, processor = create_tiny_model(seed=config.seed, **config.model_shape())
    model.train()
    trainer = PretrainTrainer(model, config, processor)
    started = time.perf_counter()
    trainer.train()
    wall_s = time.perf_counter() - started
    metrics = trainer.evaluate()
    model.eval()
    record = {
        "command": portable_command(["mprm-hf", "pretrain", *argv]),
        "recipe": {key: value for key, value in sorted(config.to_dict().items()) if key in RECORDED_FIELDS},
        "seed": config.seed,
        "steps": trainer.state.global_step,
        "wall_time_s": round(wall_s, 1),
        "machine": machine(),
        "parameters": count_parameters(model),
        "stream": {"tag": PRETRAIN_STREAM, "held_out": f"crc32(scene) % {HELD_OUT_MODULUS} == 0"},
        "vqa": vqa_report(metrics),
        "learning_curve": learning_curve(trainer.state.log_history),
    }
    out = write_base(trainer, Path(config.output_dir), record)
    width = max(map(len, record["vqa"]))
    print(
        f"\nheld-out VQA accuracy after {record['steps']} steps ({wall_s / 60:.1f} min on {record['machine']}):"
    )
    for kind, row in record["vqa"].items():
        print(
            f"  {kind:<{width}}  {row['accuracy']:.3f}   (pictures shuffled {row['shuffled_pictures']:.3f})"
        )
    print(f"base written to {out}")
    return 0


# The fields of PretrainConfig that made the base, as `vqa_eval.json` and the card record them.
RECORDED_FIELDS = (
    "text_layers", "width", "kv_heads", "vision_depth", "freeze_vision_tower", "vision_learning_rate",
    "questions_per_scene", "question_mix", "eval_scenes", "max_steps", "learning_rate", "lr_scheduler_type",
    "warmup_steps", "weight_decay", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
)  # fmt: skip
