"""`mprm-hf grpo RECIPE.yaml`: GRPO on a vision-language policy, rewarded by a trained PRM (TRL's GRPOTrainer).

The reward is `PRMReward` (mprm_hf.reward): the PRM scores every step of every sampled answer and the step
rewards are aggregated into one. The prompts are questions with their pictures and reference answers, read
from a best-of-N pool (mprm_hf.data.bon_pool: a folder or Hub dataset); without one, from the embedded
synthetic world. Answer accuracy is logged beside the PRM reward at every logging step (a reward function of
weight 0, so it never steers training), and the policy's greedy accuracy on held-out questions is measured
before and after training:

    mprm-hf grpo recipes/tiny-cpu/grpo.yaml [--max_steps N] [--reward_model PRM] [--output_dir DIR]

The recipe is a YAML mapping of `GRPOScriptArguments` and TRL's `GRPOConfig` fields. The output folder holds
the trained policy (loadable with plain transformers), `grpo.json` (before/after accuracy, the PRM's reward
of right and wrong answers, the learning curve, the command, wall time and machine), `learning_curve.png`
and a model card.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mprm_hf.errors import MPRMError
from mprm_hf.rerank import AGGREGATES
from mprm_hf.reward import PRMReward, check_reward_options, completion_text
from mprm_hf.step_format import PARAGRAPH, clean_question, split_steps

logger = logging.getLogger(__name__)

RESULTS_FILE = "grpo.json"
CURVE_FILE = "learning_curve.png"
QUESTIONS_DIR = "grpo-questions"
# `recipes/tiny-cpu/config.yaml` beside the package (a checkout): the PRM trained when none is named.
TINY_PRM_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-cpu" / "config.yaml"
TINY_PRM_DIR = "tiny-cpu-prm"


@dataclass
class GRPOScriptArguments:
    """The policy, the PRM that rewards it and the questions it practises on (the how is `GRPOConfig`)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The policy: a VLM folder or Hub id. None: the tiny base that ships with mprm-hf."},
    )
    reward_model: str | None = field(
        default=None,
        metadata={
            "help": "The PRM (folder or Hub id). None: `make demo`'s full-data PRM when it has been trained, else "
            "recipes/tiny-cpu trained once under embedded_root."
        },
    )
    aggregation: str = field(
        default="min",
        metadata={
            "help": f"How step rewards become one reward ({', '.join(AGGREGATES)}).",
            "choices": list(AGGREGATES),
        },
    )
    step_separator: str = field(
        default=PARAGRAPH,
        metadata={"help": "What separates the steps of an answer; the default, a blank line (paragraphs)."},
    )
    reward_batch_size: int = field(default=16, metadata={"help": "Completions per PRM forward pass."})
    reward_device: str | None = field(
        default=None, metadata={"help": "Device of the PRM (default: this process's GPU, else the CPU)."}
    )
    reward_dtype: str | None = field(
        default=None, metadata={"help": "dtype of the PRM ('bfloat16', 'float32'). None: the checkpoint's."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Questions with pictures and answers: a best-of-N pool folder or Hub dataset "
            "(docs/bon.md; its candidates are not used). None: questions of the embedded synthetic world."
        },
    )
    questions: int = field(
        default=512, metadata={"help": "Training questions drawn from the embedded world (no dataset_name)."}
    )
    eval_questions: int = field(
        default=128,
        metadata={"help": "Held-out questions the policy answers greedily before and after training."},
    )
    world_seed: int = field(default=0, metadata={"help": "Seed of the embedded world's questions."})
    freeze_vision_tower: bool = field(
        default=True,
        metadata={
            "help": "Freeze the policy's vision encoder (its projector and language model still train)."
        },
    )
    embedded_root: str = field(
        default="embedded", metadata={"help": "Where the embedded questions and the default PRM are built."}
    )

    def __post_init__(self) -> None:
        for name in ("questions", "eval_questions"):
            if getattr(self, name) < 1:
                raise MPRMError(
                    f"GRPOScriptArguments: field {name!r} must be at least 1, got {getattr(self, name)}"
                )
        try:  # PRMReward's own checks, before a default PRM is trained or any model loaded
            check_reward_options(self.aggregation, self.step_separator, self.reward_batch_size)
        except MPRMError as error:
            raise MPRMError(f"GRPOScriptArguments: {error}") from None


def parse_args(argv: list[str]) -> tuple[GRPOScriptArguments, Any]:
    from trl import GRPOConfig

    from mprm_hf.recipes import parse_recipe

    return parse_recipe(
        (GRPOScriptArguments, GRPOConfig), argv, prog="mprm-hf grpo", description=__doc__.splitlines()[0]
    )


# ---- answers ------------------------------------------------------------------------------------------

_ANSWER_IS = re.compile(r"answer is\s*:?\s*", re.IGNORECASE)


def normalise_answer(text: str) -> str:
    """An answer as compared: lower case, without outer spaces, quotes, final full stops or `(B)` brackets."""
    text = text.strip().lower()
    previous = None
    while text != previous:  # '"Red".' -> 'red'
        previous, text = text, text.strip().strip("\"'`").rstrip(".")
    return text[1:-1].strip() if re.fullmatch(r"\(\s*\w+\s*\)", text) else text


def final_answer(text: str) -> str:
    """The answer a free-text solution gives: what follows its last "the answer is" up to the end of that
    step, else its last step."""
    steps = split_steps(text)
    for step in reversed(steps):
        matches = list(_ANSWER_IS.finditer(step))
        if matches:
            return normalise_answer(step[matches[-1].end() :])
    return normalise_answer(steps[-1]) if steps else ""


def answer_accuracy(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """1.0 when a completion's final answer is the reference answer, else 0.0 (a TRL reward function)."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        try:
            said = final_answer(completion_text(completion))
        except MPRMError:
            said = ""
        rewards.append(float(said == normalise_answer(reference)))
    return rewards


answer_accuracy.__name__ = "accuracy"


# ---- prompts ------------------------------------------------------------------------------------------


def question_dataset(records: list[dict[str, Any]], root: Path) -> Any:
    """GRPO rows from pool records: a one-turn conversational `prompt`, the pictures (`images`) and the
    reference `answer`."""
    import datasets

    rows = {
        "prompt": [[{"role": "user", "content": clean_question(r["question"])}] for r in records],
        "images": [[str(root / image) for image in r["images"]] for r in records],
        "answer": [str(r["answer"]) for r in records],
    }
    features = datasets.Features(
        {
            "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "images": datasets.List(datasets.Image()),
            "answer": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def load_questions(script_args: GRPOScriptArguments, seed: int) -> tuple[Any, Any, str]:
    """The training and held-out question datasets and where they came from."""
    import numpy as np

    from mprm_hf.data.bon_pool import load_pool

    if script_args.dataset_name is None:
        from mprm_hf.data.synthetic import BON_DIR, write_bon_pool

        total = script_args.questions + script_args.eval_questions
        folder = Path(script_args.embedded_root) / f"{QUESTIONS_DIR}-seed{script_args.world_seed}-{total}"
        if not (folder / BON_DIR / "pool.jsonl").is_file():
            write_bon_pool(folder, total, 1, seed=script_args.world_seed)
        source = str(folder / BON_DIR)
    else:
        source = script_args.dataset_name
    pool = load_pool(source, candidates=False)
    n_eval = script_args.eval_questions
    if len(pool.records) <= n_eval:
        raise MPRMError(
            f"{source}: {len(pool.records)} questions, but eval_questions={n_eval} are held out: nothing is "
            "left to train on"
        )
    order = np.random.default_rng(seed).permutation(len(pool.records))
    held_out = [pool.records[i] for i in sorted(order[:n_eval])]
    train = [pool.records[i] for i in sorted(order[n_eval:])]
    if script_args.dataset_name is None:
        train = train[: script_args.questions]
    return question_dataset(train, pool.root), question_dataset(held_out, pool.root), source


# ---- the PRM --------------------------------------------------------------------------------------------


def default_reward_model(embedded_root: str) -> Path:
    """`make demo`'s full-data PRM when it has been trained; else recipes/tiny-cpu's PRM, trained once."""
    from mprm_hf.embedded import trained_model

    demo = trained_model(selector="full")
    if (demo / "config.json").is_file():
        return demo
    folder = Path(embedded_root) / TINY_PRM_DIR
    if not (folder / "config.json").is_file():
        if not TINY_PRM_RECIPE.is_file():
            raise MPRMError(
                f"no PRM to reward with: pass --reward_model (no {TINY_PRM_RECIPE} beside this installation)"
            )
        from mprm_hf.train import main as train_main

        logger.info("training the reward PRM with %s into %s", TINY_PRM_RECIPE, folder)
        argv = [str(TINY_PRM_RECIPE), "--output_dir", str(folder), "--embedded_root", embedded_root]
        if train_main(argv) != 0:
            raise MPRMError(f"training the reward PRM into {folder} failed")
    return folder


# ---- evaluation -----------------------------------------------------------------------------------------


def policy_answers(model: Any, processor: Any, dataset: Any, max_new_tokens: int) -> list[str]:
    """The policy's greedy answer to every question, rendered as GRPOTrainer renders its prompts."""
    import torch
    from trl.data_utils import prepare_multimodal_messages

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    try:
        with torch.inference_mode():
            for row in dataset:
                messages = prepare_multimodal_messages(row["prompt"], images=row["images"])
                inputs = processor.apply_chat_template(
                    [messages],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                    return_tensors="pt",
                ).to(device)
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
                new_tokens = output[0, inputs["input_ids"].shape[1] :]
                answers.append(processor.batch_decode([new_tokens], skip_special_tokens=True)[0])
    finally:
        model.train(was_training)
    return answers


def evaluate_policy(
    model: Any, processor: Any, dataset: Any, reward: Any, max_new_tokens: int
) -> dict[str, Any]:
    """Greedy accuracy on held-out questions, the PRM's mean reward, and how well that reward tells the
    right answers from the wrong ones (AUC)."""
    from sklearn.metrics import roc_auc_score

    answers = policy_answers(model, processor, dataset, max_new_tokens)
    completions = [[{"role": "assistant", "content": text}] for text in answers]
    correct = answer_accuracy(completions, dataset["answer"])
    rewards = reward(prompts=dataset["prompt"], completions=completions, images=dataset["images"])
    both = 0 < sum(correct) < len(correct)
    return {
        "questions": len(answers),
        "accuracy": sum(correct) / max(1, len(correct)),
        "prm_reward": sum(rewards) / max(1, len(rewards)),
        "prm_reward_auc": float(roc_auc_score(correct, rewards)) if both else None,
        "answers": [
            {"question": p[0]["content"], "answer": a, "said": s, "correct": bool(c), "reward": round(r, 4)}
            for p, a, s, c, r in zip(
                dataset["prompt"], dataset["answer"], answers, correct, rewards, strict=True
            )
        ],
    }


# ---- output ---------------------------------------------------------------------------------------------


def learning_curve(log_history: list[dict[str, Any]], reward_name: str) -> dict[str, list[list[float]]]:
    """[step, value] of the PRM reward and the sampled answers' accuracy at every logging step."""
    keys = {f"rewards/{reward_name}/mean": "prm_reward", "rewards/accuracy/mean": "accuracy"}
    curves: dict[str, list[list[float]]] = {name: [] for name in keys.values()}
    for entry in log_history:
        for key, name in keys.items():
            if key in entry and "step" in entry and math.isfinite(entry[key]):
                curves[name].append([entry["step"], round(float(entry[key]), 4)])
    return curves


def plot_learning_curve(curves: dict[str, list[list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mprm_hf.fileio import save_figure_atomic

    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    labels = {"prm_reward": "PRM reward (mean of the group)", "accuracy": "answer accuracy of the samples"}
    for name, points in curves.items():
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], label=labels[name])
    axis.set_xlabel("GRPO step")
    axis.set_ylim(0, 1)
    axis.set_title("GRPO with a PRM reward")
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=120)
    plt.close(figure)


def render_card(record: dict[str, Any], policy: str) -> str:
    """The policy's card: what it was trained from, by which reward, on what, and the before/after table.
    Local paths stay in the text (portable), never in the metadata."""
    from huggingface_hub import ModelCard, ModelCardData

    from mprm_hf.hub import ensure_no_secrets
    from mprm_hf.hub_access import hub_repo_id

    data = ModelCardData(
        base_model=hub_repo_id(policy),
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=["mprm-hf", "grpo", "trl", "process-reward-model"],
    )
    before, after = record["before"], record["after"]
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# {record['name']}\n\n"
        f"`{record['policy']}` trained by GRPO (TRL's `GRPOTrainer`) for {record['steps']} steps, rewarded by the "
        f"process reward model `{record['reward_model']}` (`mprm_hf.PRMReward`, the {record['aggregation']} of "
        f"its step rewards), on questions with pictures from `{record['questions']}`.\n\n"
        "| held-out questions, greedy | before | after |\n|---|---|---|\n"
        f"| answer accuracy | {before['accuracy']:.3f} | {after['accuracy']:.3f} |\n"
        f"| PRM reward (mean) | {before['prm_reward']:.3f} | {after['prm_reward']:.3f} |\n\n"
        f"Made by `{record['command']}` in {record['wall_time_s']:.0f} s on {record['machine']}.\n"
    )
    ensure_no_secrets(text, where="model card")
    return str(ModelCard(text))


def write_policy(trainer: Any, out: Path, record: dict[str, Any], policy: str) -> Path:
    """The policy, its processor, `grpo.json`, the learning curve and the card, each file renamed into `out`
    from a staging folder, beside the Trainer's checkpoints (which stay)."""
    from mprm_hf.fileio import atomic_files_into

    with atomic_files_into(out) as staging:
        trainer.model.save_pretrained(staging)
        trainer.processing_class.save_pretrained(staging)
        (staging / RESULTS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        plot_learning_curve(record["learning_curve"], staging / CURVE_FILE)
        (staging / "README.md").write_text(render_card(record, policy), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    from trl import GRPOTrainer

    from mprm_hf.embedded import embedded_base
    from mprm_hf.hub import portable_command
    from mprm_hf.hub_access import portable_path
    from mprm_hf.modeling import load_model_and_processor
    from mprm_hf.pretrain import machine
    from mprm_hf.train import resume_checkpoint

    # A push that cannot happen (offline, logged out) is one line now, not after training; the folder is
    # pushed whole at the end (mprm_hf.hub.push_folder), not by the Trainer on every save.
    push_to = None
    if training_args.push_to_hub:
        from mprm_hf.hub import ensure_hub_access

        push_to = training_args.hub_model_id or Path(training_args.output_dir).name
        ensure_hub_access(push_to, token=training_args.hub_token)
        training_args.push_to_hub = False

    resume = resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    with training_args.main_process_first(desc="building the reward PRM"):
        reward_path = script_args.reward_model or str(default_reward_model(script_args.embedded_root))
    reward = PRMReward(
        reward_path,
        aggregation=script_args.aggregation,
        step_separator=script_args.step_separator,
        batch_size=script_args.reward_batch_size,
        device=script_args.reward_device,
        dtype=script_args.reward_dtype,
    )
    with training_args.main_process_first(desc="building the questions"):
        train_dataset, eval_dataset, source = load_questions(script_args, training_args.seed)
    policy_path = script_args.model_name_or_path or str(
        embedded_base("pretrained", script_args.embedded_root)
    )
    policy, processor = load_model_and_processor(policy_path)
    if script_args.freeze_vision_tower:
        from mprm_hf.prm_trainer import vision_tower_parameters

        for _, parameter in vision_tower_parameters(policy):
            parameter.requires_grad_(False)
    if training_args.reward_weights is None:
        training_args.reward_weights = [1.0, 0.0]  # accuracy is logged, never rewarded
    tokens = training_args.max_completion_length

    started = time.perf_counter()
    before = evaluate_policy(policy, processor, eval_dataset, reward, tokens)
    logger.info(
        "before GRPO: held-out accuracy %.3f, PRM reward %.3f", before["accuracy"], before["prm_reward"]
    )
    trainer = GRPOTrainer(
        model=policy,
        args=training_args,
        reward_funcs=[reward, answer_accuracy],
        train_dataset=train_dataset,
        processing_class=processor,
    )
    reward.fallbacks.clear()  # count the training's fallbacks only
    trainer.train(resume_from_checkpoint=resume)
    fallbacks = dict(reward.fallbacks)
    after = evaluate_policy(trainer.model, processor, eval_dataset, reward, tokens)
    wall_s = time.perf_counter() - started

    out = Path(training_args.output_dir)
    record = {
        "name": out.resolve().name,
        "command": portable_command(["mprm-hf", "grpo", *argv]),
        "policy": portable_path(policy_path),
        "reward_model": portable_path(reward_path),
        "aggregation": script_args.aggregation,
        "questions": portable_path(source),
        "train_questions": len(train_dataset),
        "steps": trainer.state.global_step,
        "num_generations": training_args.num_generations,
        "learning_rate": training_args.learning_rate,
        "seed": training_args.seed,
        "wall_time_s": round(wall_s, 1),
        "machine": machine(),
        "before": before,
        "after": after,
        "reward_fallbacks": fallbacks,  # during training, on this process
        "learning_curve": learning_curve(trainer.state.log_history, reward.__name__),
    }
    if trainer.is_world_process_zero():
        write_policy(trainer, out, record, policy_path)
        print(
            f"\nheld-out accuracy (greedy, {after['questions']} questions): {before['accuracy']:.3f} before, "
            f"{after['accuracy']:.3f} after {record['steps']} GRPO steps; PRM reward "
            f"{before['prm_reward']:.3f} -> {after['prm_reward']:.3f}\npolicy written to {out}"
        )
        if push_to is not None:
            from mprm_hf.hub import push_folder

            url = push_folder(out, push_to, repo_type="model", token=training_args.hub_token)
            print(f"Pushed {out} to {url}")
    # every process leaves together and closes its process group (see mprm_hf.train)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0


if __name__ == "__main__":  # `accelerate launch -m mprm_hf.grpo RECIPE.yaml`: the CLI's one-line errors
    from mprm_hf.cli import launched

    launched("grpo")
