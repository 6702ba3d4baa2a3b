"""Train a process reward model from a YAML recipe: `mprm-hf train RECIPE.yaml [--key value ...]`.

The same entry point runs under every launcher, because `Trainer` reads the distributed set-up from the
environment that `accelerate launch` prepares:

    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml -m mprm_hf.train --config RECIPE.yaml

A recipe is a YAML mapping of `ScriptArguments` and `PRMConfig` fields; command-line flags override it
(TRL's `TrlParser`). Without a model or dataset, the embedded default (synthetic corpus, BIS-10% subset, tiny
Qwen2-VL) is built under `embedded_root` and used, so a recipe runs offline on a CPU.

Publishing: every save writes the model card (README.md) beside the weights (`PRMTrainer.create_model_card`).
With `push_to_hub`, the Trainer pushes `output_dir` (checkpoints left out) the Trainer way; when the Hub is
offline or you are logged out, that is one line before anything is loaded. Push a finished folder later with
`mprm-hf push <output_dir> --repo-id OWNER/NAME`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mprm_hf.errors import MPRMError
from mprm_hf.prm_config import PRMConfig

logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments:
    """What to train on and what to do with the result (the how is `PRMConfig`)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Base vision-language model: Hub id or folder. None: the embedded tiny Qwen2-VL."},
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


def normalise_argv(argv: list[str]) -> list[str]:
    """Accept `RECIPE.yaml` as a positional argument as well as `--config RECIPE.yaml`."""
    argv = list(argv)
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise MPRMError("--config needs a YAML file")
        if not Path(argv[index + 1]).is_file():
            raise MPRMError(f"{argv[index + 1]}: recipe not found")
    return argv


def parse_args(argv: list[str]) -> tuple[ScriptArguments, PRMConfig]:
    from trl import TrlParser

    parser = TrlParser((ScriptArguments, PRMConfig), prog="mprm-hf train")
    try:
        script_args, training_args = parser.parse_args_and_config(normalise_argv(argv))
    except ValueError as error:
        if isinstance(error, MPRMError):
            raise
        raise MPRMError(str(error).splitlines()[0]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{mark.name}:{mark.line + 1}" if mark else "recipe"
        raise MPRMError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    for parsed in (script_args, training_args):
        check_field_types(parsed)
    return script_args, training_args


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


_SCALARS = (bool, int, float, str)


def check_field_types(parsed: Any) -> None:
    """A recipe's values reach the dataclasses without argparse's conversion: refuse, in one line, a
    value of the wrong type for a scalar field (e.g. `num_train_epochs: [1, 2]`) before it breaks
    training deep inside transformers."""
    import dataclasses
    import types
    import typing

    try:
        hints = typing.get_type_hints(type(parsed))
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not checked
        hints = {}
    for item in dataclasses.fields(parsed):
        hint = hints.get(item.name)
        args = (
            typing.get_args(hint)
            if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
            else (hint,)
        )
        allowed = tuple(arg for arg in args if arg in _SCALARS)
        if not allowed or len(allowed) != len([arg for arg in args if arg is not type(None)]):
            continue  # not a plain scalar field (lists, enums, dicts ... are converted or checked elsewhere)
        value = getattr(parsed, item.name)
        if value is None and type(None) in args:
            continue
        if isinstance(value, bool):  # a bool is an int to isinstance, never a number here
            ok = bool in allowed
        else:
            ok = isinstance(value, allowed) or (float in allowed and isinstance(value, int))
        if not ok:
            names = " or ".join(arg.__name__ for arg in allowed)
            raise MPRMError(
                f"recipe field '{item.name}' must be {names}, got {type(value).__name__} {value!r}"
            )


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

    if script_args.model_name_or_path is None or script_args.dataset_name is None:
        from mprm_hf.embedded import ensure_embedded

        with training_args.main_process_first(desc="building the embedded default"):
            paths = ensure_embedded(script_args.embedded_root)
        script_args.model_name_or_path = script_args.model_name_or_path or str(paths["model"])
        script_args.dataset_name = script_args.dataset_name or str(paths["train"])

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
    return 0


if __name__ == "__main__":  # `accelerate launch -m mprm_hf.train ...`: the same one-line errors as the CLI
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        sys.exit(main())
    except MPRMError as error:
        print(f"mprm_hf.train: error: {error}", file=sys.stderr)
        sys.exit(1)
