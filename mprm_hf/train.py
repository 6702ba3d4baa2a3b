"""Train a process reward model from a YAML recipe: `mprm-hf train RECIPE.yaml [--key value ...]`.

The same entry point runs under every launcher, because `Trainer` reads the distributed set-up from the
environment that `accelerate launch` prepares:

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml -m mprm_hf.train --config RECIPE.yaml

A recipe is a YAML mapping of `ScriptArguments` and `PRMConfig` fields; command-line flags override it
(TRL's `TrlParser`). Without a model, the tiny base that ships with mprm-hf is fine-tuned (`--embedded_base
random`: the same model from random weights); without a dataset, the embedded BIS-10% subset of a synthetic
corpus is built under `embedded_root` and used, so a recipe runs offline on a CPU.

Publishing: every save writes the model card (README.md) beside the weights (`PRMTrainer.create_model_card`).
With `push_to_hub`, the Trainer pushes `output_dir` (checkpoints left out) the Trainer way; when the Hub is
offline or you are logged out, that is one line before anything is loaded. Push a finished folder later with
`mprm-hf push <output_dir> --repo-id OWNER/NAME`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mprm_hf.errors import MPRMError
from mprm_hf.prm_config import PRMConfig

logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments:
    """What to train on and what to do with the result (the how is `PRMConfig`)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Base vision-language model: Hub id or folder. None: the embedded tiny base (embedded_base)."
        },
    )
    embedded_base: str = field(
        default="pretrained",
        metadata={
            "help": "The tiny base when model_name_or_path is None: 'pretrained' (shipped with mprm-hf, "
            "mprm_hf/assets/tiny-base) or 'random' (the same tiny Qwen2-VL from random weights: the ablation).",
            "choices": ["pretrained", "random"],
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Stepwise training subset (docs/definitions.md#stepwise-records): a folder written by `mprm-hf select`, a jsonl/parquet "
            "file, or a Hub dataset id. None: the embedded BIS-10% subset of the synthetic corpus."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of dataset_name to train on."})
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Stepwise evaluation dataset (same forms as dataset_name)."}
    )
    eval_dataset_split: str = field(default="train", metadata={"help": "Split of eval_dataset_name."})
    eval_fraction: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction of the training subset for evaluation (seeded by `seed`)."},
    )
    model_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype to load the weights in ('bfloat16', 'float32', 'auto'). None: the checkpoint's."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel: 'sdpa', 'flash_attention_2', 'eager'. None: default."},
    )
    embedded_root: str = field(
        default="embedded",
        metadata={"help": "Where the embedded default is built when model or dataset is None."},
    )
    model_name: str | None = field(
        default=None,
        metadata={"help": "Name in the model card. Default: hub_model_id, else the output folder."},
    )
    license: str | None = field(default=None, metadata={"help": "License in the model card metadata."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra tags for the model card."})


def parse_args(argv: list[str]) -> tuple[ScriptArguments, PRMConfig]:
    from mprm_hf.recipes import parse_recipe

    return parse_recipe(
        (ScriptArguments, PRMConfig), argv, prog="mprm-hf train", description=__doc__.splitlines()[0]
    )


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` folders a save finished writing (the trainer state is written last), oldest first:
    a checkpoint half-written by a kill is passed over."""
    folder = Path(output_dir)
    found = []
    for candidate in folder.glob("checkpoint-*") if folder.is_dir() else []:
        step = candidate.name.removeprefix("checkpoint-")
        if step.isdigit() and (candidate / "trainer_state.json").is_file():
            found.append((int(step), candidate))
    return [path for _, path in sorted(found)]


def resume_checkpoint(resume: str | bool | None, output_dir: str | Path) -> str | None:
    """The checkpoint to resume from: a folder as given, or (`true` / `latest`) the last complete one."""
    if resume in (None, False, "") or (isinstance(resume, str) and resume.lower() in {"false", "none"}):
        return None
    if resume is True or (isinstance(resume, str) and resume.lower() in {"true", "latest"}):
        complete = complete_checkpoints(output_dir)
        if not complete:
            raise MPRMError(
                f"{output_dir}: no complete checkpoint to resume from (resume_from_checkpoint: true)"
            )
        return str(complete[-1])
    if not Path(resume).is_dir():
        raise MPRMError(f"{resume}: checkpoint folder not found (resume_from_checkpoint)")
    if not (Path(resume) / "trainer_state.json").is_file():
        raise MPRMError(
            f"{resume}: not a complete checkpoint (no trainer_state.json: a save was interrupted?)"
        )
    return str(resume)


def finished(checkpoint: str, training_args: PRMConfig) -> bool:
    """Whether the checkpoint already reached this run's last optimizer step (`max_steps`, or, for a
    run set by epochs, the checkpoint's own last step when the epochs are unchanged)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    step = state.get("global_step", 0)
    if training_args.max_steps > 0:
        return step >= training_args.max_steps
    same_plan = state.get("num_train_epochs") == math.ceil(training_args.num_train_epochs)
    return same_plan and bool(state.get("max_steps")) and step >= state["max_steps"]


def load_datasets(script_args: ScriptArguments, training_args: PRMConfig) -> tuple[Any, Any]:
    from mprm_hf.data.stepwise import load_stepwise

    train = load_stepwise(script_args.dataset_name, split=script_args.dataset_split)
    evaluation = None
    if script_args.eval_dataset_name:
        evaluation = load_stepwise(script_args.eval_dataset_name, split=script_args.eval_dataset_split)
    elif script_args.eval_fraction > 0:
        if not 0 < script_args.eval_fraction < 1:
            raise MPRMError(f"eval_fraction must be in (0, 1), got {script_args.eval_fraction}")
        # A seeded random hold-out; the training rows keep their order (a curriculum may depend on it).
        order = np.random.default_rng(training_args.seed).permutation(len(train))
        n_eval = max(1, round(len(train) * script_args.eval_fraction))
        held_out = np.sort(order[:n_eval])
        evaluation = train.select(held_out)
        train = train.select(np.sort(order[n_eval:]))
    return train, evaluation


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    if script_args.model_name_or_path is None:
        from mprm_hf.embedded import embedded_base

        with training_args.main_process_first(desc="building the embedded base"):
            script_args.model_name_or_path = str(
                embedded_base(script_args.embedded_base, script_args.embedded_root)
            )
    if script_args.dataset_name is None:
        from mprm_hf.embedded import ensure_embedded

        with training_args.main_process_first(desc="building the embedded default"):
            paths = ensure_embedded(script_args.embedded_root, script_args.embedded_base)
        script_args.dataset_name = str(paths["train"])

    # Before any data or model is loaded: a missing checkpoint fails at once, a finished run does nothing,
    # and a push that cannot happen (offline, logged out) is one line now, not after training.
    if training_args.push_to_hub:
        from mprm_hf.hub import ensure_hub_access

        ensure_hub_access(
            training_args.hub_model_id or Path(training_args.output_dir).name, token=training_args.hub_token
        )
    resume = resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    if resume is not None and finished(resume, training_args):
        print(f"{resume}: this run already reached its last step; nothing to train (pass a new output_dir)")
        return 0

    from mprm_hf.modeling import load_model_and_processor
    from mprm_hf.prm_trainer import PRMTrainer

    train_dataset, eval_dataset = load_datasets(script_args, training_args)
    model, processor = load_model_and_processor(script_args.model_name_or_path, dtype=script_args.model_dtype)
    if script_args.attn_implementation:
        model.set_attn_implementation(script_args.attn_implementation)

    trainer = PRMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        dataset_name=script_args.dataset_name,
    )
    trainer.card_command = ["mprm-hf", "train", *argv]
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    metrics = dict(train_result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    if eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
    trainer.save_state()
    card = {"model_name": script_args.model_name, "license": script_args.license, "tags": script_args.tags}
    trainer.create_model_card(**card)  # with the final evaluation, the card's name, license and tags
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
        print(f"Pushed {training_args.output_dir} to the Hub ({trainer.hub_model_id})")
    # Every process leaves together and closes its process group (a rank no longer exits while another
    # still writes; the teardown after that is mprm_hf.cli.launched's).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0


if __name__ == "__main__":  # `accelerate launch -m mprm_hf.train ...`: the same one-line errors as the CLI
    from mprm_hf.cli import launched

    launched("train")
