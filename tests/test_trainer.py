"""PRMConfig, the collator, the marker-only loss, metrics, and in-process training of the tiny Qwen2-VL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import EvalPrediction

from mprm_hf.errors import MPRMError
from mprm_hf.prm_config import PRMConfig
from mprm_hf.prm_trainer import (
    COUNTERS,
    IGNORE,
    PRMDataCollator,
    PRMTrainer,
    compute_step_metrics,
    vision_tower_parameters,
)
from mprm_hf.step_format import encode_traces, get_step_format, reward_token_ids, step_reward_logits


@pytest.fixture(scope="module")
def stepwise(synthetic_dir: Path):
    """The synthetic corpus as stepwise records (docs/definitions.md#stepwise-records), through the project's own converter."""
    from mprm_hf.data.stepwise import to_stepwise
    from mprm_hf.data.visualprm400k import load_visualprm400k

    rollouts, _ = load_visualprm400k(synthetic_dir)
    records, _ = to_stepwise(rollouts)
    return records


def load_tiny(tiny_model_dir: Path):
    from mprm_hf.modeling import load_model_and_processor

    return load_model_and_processor(tiny_model_dir)


def config(tmp_path: Path, **overrides) -> PRMConfig:
    settings = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "seed": 0,
        "learning_rate": 3e-3,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "logging_steps": 2,
        "save_strategy": "no",
        "max_length": 512,
        "report_to": "none",
        "disable_tqdm": True,
    }
    settings.update(overrides)
    return PRMConfig(**settings)


def test_config_defaults_follow_the_paper(tmp_path: Path) -> None:
    args = PRMConfig(output_dir=str(tmp_path), use_cpu=True)
    assert args.num_train_epochs == 1
    assert args.learning_rate == 1e-5
    assert args.lr_scheduler_type == "cosine"
    assert args.warmup_steps == 0.05
    assert args.weight_decay == 0.05
    assert args.remove_unused_columns is False
    assert args.freeze_vision_tower is True
    assert args.train_sampling_strategy == "group_by_length"
    assert (
        PRMConfig(output_dir=str(tmp_path), use_cpu=True, curriculum=True).train_sampling_strategy
        == "sequential"
    )
    with pytest.raises(MPRMError, match="step_format"):
        PRMConfig(output_dir=str(tmp_path), use_cpu=True, step_format="xml")
    with pytest.raises(MPRMError, match="label_mode"):
        PRMConfig(output_dir=str(tmp_path), use_cpu=True, label_mode="fuzzy")


def test_collator_targets_hard_soft_and_truncation(stepwise, tiny_model_dir: Path) -> None:
    _, processor = load_tiny(tiny_model_dir)
    fmt = get_step_format("prm-token")
    rows = [stepwise[i] for i in range(6)]

    hard = PRMDataCollator(processor, fmt, max_length=None, label_mode="hard")(rows)
    soft = PRMDataCollator(processor, fmt, max_length=None, label_mode="soft")(rows)
    for row, example in enumerate(rows):
        n = len(example["completions"])
        assert hard["step_targets"][row, :n].tolist() == [float(label) for label in example["labels"]]
        assert soft["step_targets"][row, :n].tolist() == pytest.approx(example["mc_scores"])
        assert (hard["step_targets"][row, n:] == IGNORE).all()
        # every target sits on a marker token
        marker = processor.tokenizer.convert_tokens_to_ids("<prm>")
        positions = hard["step_positions"][row, :n]
        assert (hard["input_ids"][row, positions] == marker).all()
    assert hard["prm_counts"].tolist() == [6, 0, 0, sum(len(r["completions"]) for r in rows), 0]

    # A length that cuts the longest rollout: its tail steps are dropped, counted, never half-scored.
    full_lengths = hard["attention_mask"].sum(dim=1)
    longest = int(full_lengths.argmax())
    cut = int(full_lengths[longest]) - 10
    short = PRMDataCollator(processor, fmt, max_length=cut)(rows)
    counts = dict(zip(COUNTERS, short["prm_counts"].tolist(), strict=True))
    assert counts["truncated_rollouts"] >= 1 and counts["dropped_steps"] >= 1
    assert short["input_ids"].shape[1] <= cut
    kept = int((short["step_targets"][longest] != IGNORE).sum())
    assert kept < len(rows[longest]["completions"])
    assert (short["step_positions"][longest, :kept] < cut).all()

    dropped = PRMDataCollator(processor, fmt, max_length=cut, truncation="drop_rollout")(rows)
    assert (dropped["step_targets"][longest] == IGNORE).all()
    assert dict(zip(COUNTERS, dropped["prm_counts"].tolist(), strict=True))["dropped_rollouts"] >= 1


def test_loss_is_cross_entropy_over_the_two_reward_logits(
    stepwise, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """compute_loss (LM head at the markers only) equals the loss computed from the full logits."""
    model, processor = load_tiny(tiny_model_dir)
    args = config(tmp_path, label_mode="soft")
    trainer = PRMTrainer(
        model=model, args=args, train_dataset=stepwise.select(range(8)), processing_class=processor
    )
    rows = [stepwise[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        fmt = get_step_format("prm-token")
        encoded = encode_traces(
            processor,
            fmt,
            [{"prompt": r["prompt"], "steps": r["completions"], "images": r["images"]} for r in rows],
        )
        inputs = {k: v for k, v in encoded.items() if k not in {"step_positions", "n_steps"}}
        full_logits = model(**inputs).logits
        pair = step_reward_logits(full_logits, encoded["step_positions"], reward_token_ids(processor, fmt))
    expected = []
    for row, example in enumerate(rows):
        for step, score in enumerate(example["mc_scores"]):
            log_probs = F.log_softmax(pair[row, step].float(), dim=-1)
            expected.append(-(score * log_probs[0] + (1 - score) * log_probs[1]))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_step_metrics() -> None:
    scores = np.array([[0.9, 0.2, IGNORE], [0.6, 0.4, 0.8]])
    labels = np.array([[1.0, 0.0, IGNORE], [0.0, 0.0, 1.0]])
    metrics = compute_step_metrics(EvalPrediction(predictions=scores, label_ids=labels))
    # predicted positive: 0.9, 0.6, 0.8 -> TP 2, FP 1, TN 2, FN 0
    assert metrics["step_accuracy"] == pytest.approx(4 / 5)
    assert metrics["f1_pos"] == pytest.approx(4 / 5)
    assert metrics["f1_neg"] == pytest.approx(4 / 5)
    assert metrics["macro_f1"] == pytest.approx(4 / 5)
    assert metrics["auc"] == pytest.approx(1.0)
    assert metrics["n_steps"] == 5


@pytest.mark.slow
def test_tiny_model_trains_and_loss_falls(stepwise, tiny_model_dir: Path, tmp_path: Path) -> None:
    model, processor = load_tiny(tiny_model_dir)
    vision_before = {name: p.detach().clone() for name, p in vision_tower_parameters(model)}
    train, held_out = stepwise.select(range(0, 320)), stepwise.select(range(480, 560))
    args = config(tmp_path, num_train_epochs=2, max_length=256)
    trainer = PRMTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=held_out, processing_class=processor
    )
    assert "length" in trainer.train_dataset.column_names
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"] - 0.02
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert np.mean(losses[-5:]) < np.mean(losses[:3])
    for key in ("eval_step_accuracy", "eval_f1_pos", "eval_f1_neg", "eval_macro_f1", "eval_auc"):
        assert key in after
    # truncation counters reach the trainer state
    assert any("prm_truncated_rollouts" in entry for entry in trainer.state.log_history)
    # the vision tower was frozen, everything else trained
    vision = dict(vision_tower_parameters(trainer.model))
    assert vision and all(torch.equal(vision[name], value) for name, value in vision_before.items())


def test_curriculum_keeps_dataset_order(stepwise, tiny_model_dir: Path, tmp_path: Path) -> None:
    model, processor = load_tiny(tiny_model_dir)
    args = config(tmp_path, curriculum=True)
    trainer = PRMTrainer(
        model=model, args=args, train_dataset=stepwise.select(range(32)), processing_class=processor
    )
    assert list(trainer._get_train_sampler()) == list(range(32))


def test_missing_columns_are_a_clear_error(stepwise, tiny_model_dir: Path, tmp_path: Path) -> None:
    model, processor = load_tiny(tiny_model_dir)
    with pytest.raises(MPRMError, match="missing column"):
        PRMTrainer(
            model=model,
            args=config(tmp_path),
            train_dataset=stepwise.remove_columns(["labels"]),
            processing_class=processor,
        )


def test_lora_adapter_saves_loads_and_scores_identically(
    stepwise, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from mprm_hf.modeling import load_model_and_processor
    from mprm_hf.step_format import forward_step_reward_logits

    model, processor = load_tiny(tiny_model_dir)
    args = config(tmp_path, use_peft=True, lora_r=4, lora_alpha=8, max_steps=6, learning_rate=5e-3)
    trainer = PRMTrainer(
        model=model, args=args, train_dataset=stepwise.select(range(64)), processing_class=processor
    )
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert not any("visual" in name for name in trainable)
    trainer.train()
    trainer.save_model(args.output_dir)
    assert (Path(args.output_dir) / "adapter_config.json").is_file()

    fmt = get_step_format("prm-token")
    rows = [stepwise[i] for i in range(100, 104)]
    traces = [{"prompt": r["prompt"], "steps": r["completions"], "images": r["images"]} for r in rows]
    trained = trainer.model.eval()
    loaded, loaded_processor = load_model_and_processor(tiny_model_dir, adapter=args.output_dir)
    ids = reward_token_ids(processor, fmt)
    with torch.no_grad():
        ours = forward_step_reward_logits(trained, encode_traces(processor, fmt, traces), ids)
        theirs = forward_step_reward_logits(loaded, encode_traces(loaded_processor, fmt, traces), ids)
        base, _ = load_tiny(tiny_model_dir)
        untrained = forward_step_reward_logits(base, encode_traces(processor, fmt, traces), ids)
    torch.testing.assert_close(theirs, ours)
    assert not torch.allclose(untrained, ours)  # the adapter changed the scores


def test_training_inputs_and_scores_match_scoring(stepwise, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The collator builds the same tokens as `score_traces`, and the trainer's step probabilities equal its
    rewards: a trained model is scored on exactly the layout it was trained on."""
    from mprm_hf.scoring import score_traces

    model, processor = load_tiny(tiny_model_dir)
    records = stepwise.select(range(200, 206))
    trainer = PRMTrainer(
        model=model, args=config(tmp_path, max_length=None), train_dataset=records, processing_class=processor
    )
    traces = [{"prompt": r["prompt"], "steps": r["completions"], "images": r["images"]} for r in records]
    fmt = get_step_format("prm-token")
    for record, trace in zip(records, traces, strict=True):
        ours = trainer.data_collator([record])
        theirs = encode_traces(processor, fmt, [trace])
        assert torch.equal(ours["input_ids"], theirs["input_ids"])
        assert torch.equal(ours["step_positions"], theirs["step_positions"])
    predictions = trainer.predict(records).predictions
    rewards = score_traces(model, processor, traces, batch_size=4, progress=False)
    for row, expected in enumerate(rewards):
        assert predictions[row, : len(expected)].tolist() == pytest.approx(expected, abs=1e-5)


def test_lora_trains_the_embedding_of_a_marker_the_base_lacks(
    stepwise, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base model without the format's marker token (any real VLM) gets it added, and under LoRA its new
    embedding row trains and is saved with the adapter."""
    from dataclasses import replace

    from mprm_hf import step_format
    from mprm_hf.modeling import load_model_and_processor
    from mprm_hf.step_format import forward_step_reward_logits

    marker_format = replace(step_format.STEP_FORMATS["prm-token"], marker_token="<step_end>")
    monkeypatch.setitem(step_format.STEP_FORMATS, "prm-token", marker_format)
    model, processor = load_tiny(tiny_model_dir)
    vocabulary = len(processor.tokenizer)
    args = config(
        tmp_path, use_peft=True, lora_r=4, lora_alpha=8, max_steps=4, learning_rate=5e-2, warmup_steps=0
    )
    trainer = PRMTrainer(
        model=model, args=args, train_dataset=stepwise.select(range(32)), processing_class=processor
    )
    marker_id = processor.tokenizer.convert_tokens_to_ids("<step_end>")
    assert marker_id == vocabulary  # added by prepare_model_and_processor
    embeddings = trainer.model.get_input_embeddings()
    before = embeddings(torch.tensor([marker_id, 5])).detach().clone()
    trainer.train()
    after = embeddings(torch.tensor([marker_id, 5])).detach()
    assert not torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    trainer.save_model(args.output_dir)

    loaded, loaded_processor = load_model_and_processor(tiny_model_dir, adapter=args.output_dir)
    traces = [
        {"prompt": r["prompt"], "steps": r["completions"], "images": r["images"]}
        for r in stepwise.select(range(40, 43))
    ]
    ids = reward_token_ids(processor, marker_format)
    with torch.no_grad():
        ours = forward_step_reward_logits(
            trainer.model.eval(), encode_traces(processor, marker_format, traces), ids
        )
        theirs = forward_step_reward_logits(
            loaded, encode_traces(loaded_processor, marker_format, traces), ids
        )
    torch.testing.assert_close(theirs, ours)
