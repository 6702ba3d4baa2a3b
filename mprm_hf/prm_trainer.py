"""`PRMTrainer`: train a vision-language model as a process reward model (docs/definitions.md#model-and-training).

The model reads a whole reasoning trace once; after each step stands a marker position whose logits over two
reward tokens (positive, negative) score the step. The loss is the cross-entropy over those two logits at the
marker positions, with hard (label) or soft (Monte Carlo score) targets, averaged over every marker of the
(global, gradient-accumulated) batch. No other token carries loss, and only the marker positions are projected
onto the vocabulary (`logits_to_keep`), so no full-vocabulary logits are materialised for the whole sequence.

Inputs are built by `mprm_hf.step_format.encode_traces`, the same function scoring uses, so a trained model
sees at inference exactly the token layout it was trained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image
from transformers import EvalPrediction, PreTrainedModel, ProcessorMixin, Trainer

from mprm_hf.errors import MPRMError
from mprm_hf.fileio import write_text_atomic
from mprm_hf.prm_config import DEFAULT_LORA_TARGETS, PRMConfig
from mprm_hf.step_format import (
    StepFormat,
    encode_traces,
    forward_step_reward_logits,
    get_step_format,
    prepare_model_and_processor,
    reward_token_ids,
)

logger = logging.getLogger(__name__)

IGNORE = -100.0
REQUIRED_COLUMNS = ("prompt", "completions", "labels")
# Parameter-name fragments of the vision encoders of the supported families (Qwen2-VL / Qwen2.5-VL: visual,
# InternVL / LLaVA: vision_tower, Idefics3 / SmolVLM: vision_model).
VISION_TOWER_NAMES = ("visual.", "vision_tower.", "vision_model.", "vision_encoder.")
# Projectors (vision features -> language model) train even with the vision tower frozen, as the reference
# does. Qwen2-VL / Qwen2.5-VL keep theirs inside the tower (visual.merger); LLaVA / InternVL
# (multi_modal_projector) and Idefics3 (connector) keep theirs outside it.
PROJECTOR_NAMES = ("visual.merger.", "visual.deepstack_merger_list.", "multi_modal_projector.", "connector.")
# Order of the truncation counters the collator returns with each batch.
COUNTERS = ("rollouts", "truncated_rollouts", "dropped_rollouts", "steps", "dropped_steps")
COUNTS_FILE = "prm_counts.json"  # the running totals, in every checkpoint


def step_targets_of(
    record: dict[str, Any], label_mode: str, label_threshold: float | None
) -> tuple[list, list]:
    """(loss targets, hard labels) of one stepwise record: the target is the probability of the positive token."""
    record_id = record.get("id", "?")
    scores = record.get("mc_scores")
    if scores is None:  # a TRL stepwise dataset: no MC scores, the labels are the soft targets too
        scores = [float(label) for label in record["labels"]]
    if label_threshold is not None:
        for index, score in enumerate(scores):
            if score is None:
                raise MPRMError(f"record {record_id!r}: field 'mc_scores[{index}]' is missing")
        hard = [float(score > label_threshold) for score in scores]
    else:
        hard = [float(bool(label)) for label in record["labels"]]
    if label_mode == "hard":
        return hard, hard
    for index, score in enumerate(scores):
        if score is None or not 0.0 <= score <= 1.0:
            raise MPRMError(
                f"record {record_id!r}: field 'mc_scores[{index}]' is not a probability ({score!r})"
            )
    return [float(score) for score in scores], hard


@dataclass
class PRMDataCollator:
    """Stepwise records -> one padded model batch with per-step targets.

    Images are opened with PIL and go through the processor in one batched call (inside `encode_traces`).
    A rollout longer than `max_length` keeps the steps whose markers fit ('drop_tail_steps') or carries no
    loss at all ('drop_rollout'); the batch reports how many rollouts and steps were cut (`prm_counts`), and
    the trainer logs the running totals, so nothing is dropped silently.
    """

    processor: ProcessorMixin
    step_format: StepFormat
    max_length: int | None = None
    label_mode: str = "hard"
    label_threshold: float | None = None
    truncation: str = "drop_tail_steps"
    _warned: bool = field(default=False, init=False, repr=False)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        traces = [
            {
                "prompt": example["prompt"],
                "steps": list(example["completions"]),
                "images": list(example.get("images") or []),  # opened with PIL by encode_traces
                "id": example.get("id"),
            }
            for example in examples
        ]
        batch = dict(encode_traces(self.processor, self.step_format, traces, max_length=self.max_length))
        kept_steps = batch.pop("n_steps")
        positions = batch["step_positions"]
        if positions.shape[1] == 0:  # a batch whose every step was truncated still needs one (ignored) column
            positions = torch.full((len(examples), 1), -1, dtype=torch.long)
            batch["step_positions"] = positions
        targets = torch.full(positions.shape, IGNORE, dtype=torch.float32)
        labels = torch.full(positions.shape, IGNORE, dtype=torch.float32)
        counts = dict.fromkeys(COUNTERS, 0)
        for row, (example, kept) in enumerate(zip(examples, kept_steps, strict=True)):
            total = len(example["completions"])
            counts["rollouts"] += 1
            counts["steps"] += total
            if kept < total:
                counts["truncated_rollouts"] += 1
                if self.truncation == "drop_rollout" or kept == 0:
                    kept = 0
                    counts["dropped_rollouts"] += 1
                counts["dropped_steps"] += total - kept
                self._warn_once(example, total, kept)
            if kept:
                step_targets, step_labels = step_targets_of(example, self.label_mode, self.label_threshold)
                targets[row, :kept] = torch.tensor(step_targets[:kept])
                labels[row, :kept] = torch.tensor(step_labels[:kept])
        batch["step_targets"] = targets
        batch["step_labels"] = labels
        batch["prm_counts"] = torch.tensor([counts[name] for name in COUNTERS], dtype=torch.long)
        return batch

    def _warn_once(self, example: dict[str, Any], total: int, kept: int) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "record %r does not fit in max_length=%s: %d of its %d steps kept (truncation=%s); "
                "running totals are logged as truncated_rollouts / dropped_steps / dropped_rollouts",
                example.get("id", "?"),
                self.max_length,
                kept,
                total,
                self.truncation,
            )


def binary_f1(tp: int, fp: int, fn: int) -> float:
    """F1 = 2TP / (2TP + FP + FN), 0 when nothing was predicted or present (docs/definitions.md#metric)."""
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def compute_step_metrics(prediction: EvalPrediction, threshold: float = 0.5) -> dict[str, float]:
    """Step accuracy, F1_pos, F1_neg, macro-F1 and ROC-AUC over every scored (non-truncated) step."""
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(prediction.predictions, dtype=np.float64).reshape(-1)
    labels = np.asarray(prediction.label_ids, dtype=np.float64).reshape(-1)
    keep = labels != IGNORE
    scores, truth = scores[keep], labels[keep] > 0.5
    predicted = scores >= threshold
    tp = int(np.sum(predicted & truth))
    tn = int(np.sum(~predicted & ~truth))
    fp = int(np.sum(predicted & ~truth))
    fn = int(np.sum(~predicted & truth))
    f1_pos, f1_neg = binary_f1(tp, fp, fn), binary_f1(tn, fn, fp)
    both_classes = 0 < truth.sum() < truth.size
    return {
        "step_accuracy": (tp + tn) / truth.size if truth.size else 0.0,
        "f1_pos": f1_pos,
        "f1_neg": f1_neg,
        "macro_f1": (f1_pos + f1_neg) / 2,
        "auc": float(roc_auc_score(truth, scores)) if both_classes else float("nan"),
        "n_steps": float(truth.size),
    }


def vision_tower_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The vision encoder's parameters (projector excluded), found by the module names the supported families
    use: what `freeze_vision_tower` freezes."""
    return [
        (name, p)
        for name, p in model.named_parameters()
        if any(part in name for part in VISION_TOWER_NAMES)
        and not any(part in name for part in PROJECTOR_NAMES)
    ]


def projector_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The projector's parameters: they train whether or not the vision tower is frozen."""
    return [
        (name, p) for name, p in model.named_parameters() if any(part in name for part in PROJECTOR_NAMES)
    ]


def card_hyperparameters(trainer: Trainer) -> dict[str, Any]:
    """transformers' own hyperparameter summary of a run, plus every field `PRMConfig` declares (its PRM
    knobs and the defaults it changes), as plain values."""
    from enum import Enum

    from transformers.modelcard import extract_hyperparameters_from_trainer

    values = extract_hyperparameters_from_trainer(trainer)
    args = trainer.args
    optimizer = args.optim.value if isinstance(args.optim, Enum) else str(args.optim)
    if "optimizer" in values and "adam" in optimizer.lower():
        values["optimizer"] = (
            f"{optimizer} (betas ({args.adam_beta1}, {args.adam_beta2}), epsilon {args.adam_epsilon})"
        )
    elif "optimizer" in values:
        values["optimizer"] = optimizer
    for name in PRMConfig.__annotations__:
        value = getattr(args, name)
        values[name] = value.value if isinstance(value, Enum) else value
    return values


def held_out_evaluation(log_history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last held-out step metrics of a run (`compute_step_metrics`), in the card's evaluation shape."""
    import math

    metrics = next((entry for entry in reversed(log_history) if "eval_macro_f1" in entry), None)
    if metrics is None:
        return None
    auc = metrics.get("eval_auc")
    return {
        "overall": metrics["eval_macro_f1"],
        "macro_f1_pooled": metrics["eval_macro_f1"],
        "f1_positive": metrics["eval_f1_pos"],
        "f1_negative": metrics["eval_f1_neg"],
        "auc": None if auc is None or math.isnan(auc) else auc,
    }


class PRMTrainer(Trainer):
    """A `transformers.Trainer` for multimodal process reward models.

    Args:
        model: an `AutoModelForImageTextToText` model, or its name / path (loaded with
            `mprm_hf.modeling.load_model_and_processor`).
        args: a `PRMConfig`.
        train_dataset / eval_dataset: stepwise datasets (docs/definitions.md#stepwise-records: prompt, completions, labels, and optionally
            images, mc_scores, id), e.g. from `mprm_hf.data.stepwise.load_stepwise`.
        processing_class: the model's processor (required when `model` is a model object).
    """

    # compute_loss divides by the number of markers of the whole accumulated (and gathered) batch itself.
    loss_is_scaled_for_ga = True
    _tag_names = ["prm", "mprm-hf"]
    card_command: str | list[str] | None = None
    """The command line that made the run, for the card (`mprm-hf train` sets it)."""

    def __init__(
        self,
        model: PreTrainedModel | str,
        args: PRMConfig,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: ProcessorMixin | None = None,
        callbacks: list | None = None,
        peft_config: Any | None = None,
        dataset_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, PRMConfig):
            raise MPRMError(f"PRMTrainer: args must be a PRMConfig, got {type(args).__name__}")
        if args.push_to_hub:  # offline or logged out: one line now, not a traceback after loading the model
            from mprm_hf.hub import ensure_hub_access

            ensure_hub_access(args.hub_model_id or Path(args.output_dir).name, token=args.hub_token)
        self.dataset_name = dataset_name
        self.base_model = model if isinstance(model, str) else getattr(model, "name_or_path", None)
        if isinstance(model, str):
            from mprm_hf.modeling import load_model_and_processor

            model, loaded_processor = load_model_and_processor(model)
            processing_class = processing_class or loaded_processor
        if processing_class is None:
            raise MPRMError("PRMTrainer: processing_class (the model's processor) is required")

        self.step_format = get_step_format(args.step_format)
        vocabulary_before = len(getattr(processing_class, "tokenizer", processing_class))
        prepared = prepare_model_and_processor(model, processing_class, self.step_format)
        if isinstance(prepared, tuple):
            model, processing_class = prepared
        self.reward_ids = reward_token_ids(processing_class, self.step_format)

        if args.freeze_vision_tower:
            frozen = vision_tower_parameters(model)
            if not frozen:
                logger.warning(
                    "freeze_vision_tower: no vision encoder parameters found in %s", type(model).__name__
                )
            for _, parameter in frozen:
                parameter.requires_grad_(False)
        if peft_config is not None or args.use_peft:
            added = list(
                range(vocabulary_before, len(getattr(processing_class, "tokenizer", processing_class)))
            )
            model = self._wrap_lora(model, args, added, peft_config)

        with args.main_process_first(desc="measuring rollout lengths"):
            train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
            if isinstance(eval_dataset, dict):
                eval_dataset = {
                    key: self._prepare_dataset(value, processing_class, args, f"eval[{key}]")
                    for key, value in eval_dataset.items()
                }
            else:
                eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")

        collator = PRMDataCollator(
            processor=processing_class,
            step_format=self.step_format,
            max_length=args.max_length,
            label_mode=args.label_mode,
            label_threshold=args.label_threshold,
            truncation=args.truncation,
        )
        super().__init__(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=kwargs.pop("compute_metrics", compute_step_metrics),
            callbacks=callbacks,
            **kwargs,
        )
        self._prm_counts = torch.zeros(len(COUNTERS), dtype=torch.long)

    # ---- set-up ------------------------------------------------------------------------------------------

    @staticmethod
    def _wrap_lora(
        model: PreTrainedModel, args: PRMConfig, added_tokens: list[int], peft_config: Any | None = None
    ) -> torch.nn.Module:
        """LoRA on the language model, from `peft_config` (as TRL's trainers take it) or the config's LoRA
        fields; tokens the step format added (e.g. `<prm>`) get trainable embedding rows (peft's
        `trainable_token_indices`), since their fresh embeddings would otherwise stay untrained."""
        from peft import LoraConfig, get_peft_model

        if peft_config is not None:
            if added_tokens and getattr(peft_config, "trainable_token_indices", "absent") is None:
                peft_config.trainable_token_indices = added_tokens
            return get_peft_model(model, peft_config)

        targets: str | list[str] = args.lora_target_modules or DEFAULT_LORA_TARGETS
        if isinstance(targets, list) and len(targets) == 1:
            targets = targets[0]  # one entry may be a regex, as in peft
        config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=targets,
            trainable_token_indices=added_tokens or None,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)

    @staticmethod
    def _prepare_dataset(
        dataset: Dataset | None, processor: ProcessorMixin, args: PRMConfig, name: str
    ) -> Dataset | None:
        """Check the stepwise columns and add a `length` column (text + image tokens) for length grouping."""
        if dataset is None:
            return None
        missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
        if missing:
            raise MPRMError(
                f"{name} dataset: missing column(s) {missing}; a stepwise dataset has prompt, completions, labels "
                f"(and optionally images, mc_scores); found {dataset.column_names}"
            )
        if args.length_column_name in dataset.column_names:
            return dataset
        return dataset.map(
            RolloutLength(processor),
            batched=True,
            num_proc=args.dataset_num_proc,
            desc=f"Measuring {name} rollouts",
        )

    def _get_eval_sampler(self, eval_dataset: Dataset) -> torch.utils.data.Sampler | None:
        """Evaluation and `predict` keep dataset order (also under length grouping), so that predictions line
        up with their records; the base class would group eval batches by length, in a shuffled order."""
        if self.args.world_size <= 1:
            return torch.utils.data.SequentialSampler(eval_dataset)
        return None

    # ---- loss -------------------------------------------------------------------------------------------

    def _reward_logits(self, model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """(reward logits [batch, max_steps, 2] (positive, negative), loss targets, hard labels).

        The forward pass is `forward_step_reward_logits`, the one scoring uses: only the rows at step positions
        reach the LM head (`logits_to_keep`).
        """
        batch = dict(inputs)
        targets = batch.pop("step_targets")
        labels = batch.pop("step_labels")
        counts = batch.pop("prm_counts", None)
        if counts is not None and model.training:
            self._prm_counts += counts.detach().cpu()
        return forward_step_reward_logits(model, batch, self.reward_ids), targets, labels

    @staticmethod
    def _marker_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-marker cross-entropy against target probability t of the positive token, and the marker mask."""
        mask = targets != IGNORE
        log_probs = F.log_softmax(logits.float(), dim=-1)
        t = targets.clamp(0.0, 1.0)
        losses = -(t * log_probs[..., 0] + (1.0 - t) * log_probs[..., 1])
        return torch.where(mask, losses, torch.zeros_like(losses)), mask

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits, targets, _ = self._reward_logits(model, inputs)
        losses, mask = self._marker_losses(logits, targets)
        if num_items_in_batch is None:
            loss = losses.sum() / mask.sum().clamp(min=1)
        else:
            loss = losses.sum() / torch.as_tensor(num_items_in_batch, device=losses.device).clamp(min=1)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.args.world_size  # gradients are averaged over ranks, the count was summed
        return (loss, logits) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Markers carrying loss in the whole gradient-accumulation window (over all ranks), to normalise by."""
        if not batch_samples or "step_targets" not in batch_samples[0]:
            return None
        count = sum((batch["step_targets"] != IGNORE).sum() for batch in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Loss, positive-token probability per step (IGNORE where no step) and the hard labels."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            logits, targets, labels = self._reward_logits(model, inputs)
        losses, mask = self._marker_losses(logits, targets)
        loss = (losses.sum() / mask.sum().clamp(min=1)).detach()
        if prediction_loss_only:
            return loss, None, None
        probabilities = torch.softmax(logits.float(), dim=-1)[..., 0]
        probabilities = torch.where(labels != IGNORE, probabilities, torch.full_like(probabilities, IGNORE))
        return loss, probabilities.detach(), labels

    # ---- resume -----------------------------------------------------------------------------------------

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: torch.nn.Module | None = None
    ) -> None:
        """Reload full weights through `from_pretrained`, which maps the checkpoint's key names.

        `save_pretrained` writes vision-language models (Qwen2-VL, ...) under their original key names, which
        `Trainer`'s raw `load_state_dict(strict=False)` does not map back: it would silently resume from the
        initial weights. Adapters, DeepSpeed and FSDP checkpoints keep the `Trainer` path.
        """
        target = self.accelerator.unwrap_model(self.model if model is None else model)
        folder = Path(resume_from_checkpoint)
        has_full_weights = (folder / "model.safetensors").is_file() or (
            folder / "model.safetensors.index.json"
        ).is_file()
        if not has_full_weights or not isinstance(target, PreTrainedModel) or self.is_fsdp_enabled:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        dtype = next(target.parameters()).dtype
        reloaded = type(target).from_pretrained(folder, dtype=dtype)
        target.load_state_dict(reloaded.state_dict(), strict=True)

    def _save_checkpoint(self, model, trial) -> None:  # noqa: ANN001 - Trainer's signature
        """Keep the running totals with the checkpoint, so a resumed run counts on from them."""
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir():
                totals = dict(zip(COUNTERS, self._prm_counts.tolist(), strict=True))
                write_text_atomic(folder / COUNTS_FILE, json.dumps(totals) + "\n")

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Called on every resume (also under DeepSpeed): restore the running totals beside the RNG state."""
        super()._load_rng_state(checkpoint)
        path = Path(checkpoint) / COUNTS_FILE if checkpoint else None
        if path is not None and path.is_file():
            totals = json.loads(path.read_text(encoding="utf-8"))
            self._prm_counts = torch.tensor([int(totals.get(name, 0)) for name in COUNTERS], dtype=torch.long)

    # ---- model card and Hub ----------------------------------------------------------------------------

    def model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        license: str | None = None,
        finetuned_from: str | None = None,
    ) -> Any:
        """This run's `ModelCard`: base model, training data with its `selection.json`, the step format,
        the hyperparameters read from `self.args`, and the held-out evaluation when there was one."""
        from mprm_hf.hub import render_model_card
        from mprm_hf.hub_access import portable_path
        from mprm_hf.selection.provenance import read_selection

        dataset = dataset_name or self.dataset_name
        selection = read_selection(dataset)
        extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
        base_model = finetuned_from or self.base_model or "unknown"
        return render_model_card(
            model_name=model_name or self._card_model_name(),
            base_model=portable_path(base_model),
            datasets=portable_path(dataset) if dataset else "unknown",
            selector=str(selection["selector"]),
            selector_params=selection["selector_params"],
            hyperparameters=card_hyperparameters(self),
            step_format=self.args.step_format,
            command=self.card_command,
            evaluation=held_out_evaluation(self.state.log_history),
            evaluation_dataset=f"{portable_path(dataset) if dataset else 'the training data'} (held-out split)",
            evaluation_split="eval",
            license=license,
            tags=[*self._tag_names, *extra_tags],
            repo_id=self.args.hub_model_id,
        )

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        dataset_name: str | None = None,
        output_dir: str | None = None,
    ) -> Path | None:
        """Write the card as README.md in `output_dir` (default `args.output_dir`), keeping the benchmark
        results an earlier `mprm-hf evaluate --update-card` added. Called on every save and by `push_to_hub`."""
        if not self.is_world_process_zero():
            return None
        from mprm_hf.hub import carry_evaluations, ensure_no_secrets

        if dataset_name is None and isinstance(dataset, str):
            dataset_name = dataset
        folder = Path(output_dir or self.args.output_dir)
        card = self.model_card(model_name, dataset_name, tags, license, finetuned_from)
        card = carry_evaluations(card, folder / "README.md")
        text = str(card)
        ensure_no_secrets(text, where=str(folder / "README.md"))
        folder.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(folder / "README.md", text)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Every save (final, checkpoint, before a push) writes the model card beside the weights."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.create_model_card(output_dir=output_dir or self.args.output_dir)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create the Hub repository, or fail in one `MPRMError` line. Both callers (`__init__` with
        `push_to_hub`, and `push_to_hub`) have run `ensure_hub_access` already."""
        from mprm_hf.hub import scrubbed_line

        target = self.args.hub_model_id or Path(self.args.output_dir).name
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as error:  # noqa: BLE001 - HTTP errors become one line, the token scrubbed
            raise MPRMError(f"cannot create the Hub repository {target}: {scrubbed_line(error)}") from None

    def push_to_hub(
        self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs: Any
    ):
        """`Trainer.push_to_hub` (weights, processor and card from `output_dir`, checkpoints left out),
        checked first so that an offline or logged-out push fails in one line before anything is saved."""
        from mprm_hf.hub import ensure_hub_access, scrubbed_line

        if self.is_world_process_zero():
            target = self.args.hub_model_id or Path(self.args.output_dir).name
            ensure_hub_access(target, token=kwargs.get("token") or self.args.hub_token)
        try:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
        except MPRMError:
            raise
        except Exception as error:  # noqa: BLE001
            raise MPRMError(f"push of {self.args.output_dir} failed: {scrubbed_line(error)}") from None

    def _card_model_name(self) -> str:
        if self.args.hub_model_id:
            return self.args.hub_model_id.split("/")[-1]
        return Path(self.args.output_dir).resolve().name

    # ---- reporting --------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the running truncation counters (summed over ranks) to every training log line."""
        if "loss" in logs or "train_loss" in logs:
            counts = self._prm_counts.to(self.args.device)
            if self.args.world_size > 1:
                counts = self.accelerator.reduce(counts, reduction="sum")
            logs.update(
                {f"prm_{name}": int(value) for name, value in zip(COUNTERS, counts.tolist(), strict=True)}
            )
        super().log(logs, start_time)


class RolloutLength:
    """Batched `datasets.map` function: an estimate of each rollout's token count, for length grouping.

    Text is tokenised exactly; each image adds the number of placeholder tokens the processor would insert for
    its size (read from the file header), so grouping sees image-heavy rollouts as long.
    """

    def __init__(self, processor: ProcessorMixin) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)

    def __call__(self, batch: dict[str, list]) -> dict[str, list[int]]:
        texts = [
            prompt + "\n".join(steps)
            for prompt, steps in zip(batch["prompt"], batch["completions"], strict=True)
        ]
        token_counts = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        lengths = []
        for index, count in enumerate(token_counts):
            steps = batch["completions"][index]
            if len(steps) != len(batch["labels"][index]):
                raise MPRMError(
                    f"record {batch.get('id', ['?'] * len(texts))[index]!r}: field 'labels' has "
                    f"{len(batch['labels'][index])} entries for {len(steps)} completions"
                )
            images = batch["images"][index] if "images" in batch else []
            lengths.append(count + 4 * len(steps) + self._image_tokens(images or []))
        return {"length": lengths}

    def _image_tokens(self, images: list[Any]) -> int:
        """Image placeholder tokens of a rollout's images: paths (read from the header) or decoded images
        (a subset published with its images embedded)."""
        if not images or not hasattr(self.processor, "_get_num_multimodal_tokens"):
            return 0
        sizes = []
        for path in images:
            if isinstance(path, Image.Image):
                sizes.append((path.height, path.width))
                continue
            try:
                with Image.open(path) as image:
                    sizes.append((image.height, image.width))
            except OSError:
                continue  # unreadable images are reported by the collator, with the record id
        if not sizes:
            return 0
        try:
            data = self.processor._get_num_multimodal_tokens(image_sizes=sizes)
        except (TypeError, ValueError, AttributeError, NotImplementedError):
            return 0
        return int(sum(getattr(data, "num_image_tokens", None) or []))
