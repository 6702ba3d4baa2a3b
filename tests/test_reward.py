"""`PRMReward` as a TRL reward function: through a real `GRPOTrainer` run on the CPU, its reward of right and
wrong steps once the PRM has learned the world, and completions and images it cannot score."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from mprm_hf import PRMReward
from mprm_hf.data import synthetic
from mprm_hf.errors import MPRMError
from mprm_hf.grpo import answer_accuracy, final_answer, question_dataset
from mprm_hf.scoring import score_traces
from mprm_hf.step_format import split_steps

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_RECIPE = REPO_ROOT / "recipes" / "tiny-cpu" / "config.yaml"
GRPO_RECIPE = REPO_ROOT / "recipes" / "tiny-cpu" / "grpo.yaml"


@pytest.fixture(scope="module")
def learned_prm(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe's PRM fine-tuned from the shipped base on the fixture world's rollouts, labelled by
    the world's truth sidecar (150 steps, ~30 s): a PRM that has learned the world."""
    import datasets

    from mprm_hf.cli import main

    root = tmp_path_factory.mktemp("learned")
    full = root / "full"
    assert main(["select", "--annotations", str(synthetic_dir), "--method", "full", "--format", "arrow",
                 "--output", str(full), "--quiet"]) == 0  # fmt: skip
    truth = synthetic.load_truth(synthetic_dir)
    labelled = datasets.load_from_disk(str(full)).map(lambda row: {"labels": truth[row["id"]]})
    labelled.save_to_disk(str(root / "truth"))
    out = root / "prm"
    argv = ["train", str(TRAIN_RECIPE), "--dataset_name", str(root / "truth"), "--output_dir", str(out),
            "--embedded_root", str(root / "embedded"), "--max_steps", "150", "--save_strategy", "no",
            "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def reward(learned_prm: Path) -> PRMReward:
    return PRMReward(learned_prm, aggregation="min", batch_size=4)


def pool_questions(n: int, seed: int) -> list[synthetic.PoolQuestion]:
    return [q for q in synthetic.simulate_pool(n, 4, seed=seed) if len(q.scenes) == 1]


def test_a_wrong_step_lowers_the_reward_of_a_learned_prm(reward: PRMReward) -> None:
    """The same correct trace, once as it is and once with one step's claim made false: the PRM that learned
    the world rewards the second less, by its weakest step."""
    rng = random.Random(0)
    drops = []
    for question in pool_questions(48, seed=11):
        right = next((c for c in question.candidates if c["correct"] and len(c["steps"]) >= 2), None)
        if right is None:
            continue
        wrong_step = synthetic.body_step(synthetic.make_claim(question.scenes[0], False, rng), rng)
        position = rng.randrange(len(right["steps"]) - 1)  # a body step, the conclusion kept
        broken = [*right["steps"][:position], wrong_step, *right["steps"][position + 1 :]]
        picture = synthetic.draw_scene(question.scenes[0])
        prompt = [{"role": "user", "content": question.question.text}]
        completions = ["\n\n".join(right["steps"]), "\n\n".join(broken)]
        as_is, with_error = reward(
            prompts=[prompt, prompt], completions=completions, image=[picture, picture]
        )
        drops.append(as_is - with_error)
    assert len(drops) >= 20
    lower = sum(drop > 0 for drop in drops)
    assert lower >= 0.7 * len(drops), drops  # 80% measured
    assert sum(drops) / len(drops) > 0.2, drops  # 0.36 measured


def test_rewards_are_the_scoring_path_aggregated(reward: PRMReward) -> None:
    """One batched call equals `score_traces` of each completion alone, aggregated by the project's rules;
    a conversational completion and a plain string give the same reward."""
    question = pool_questions(8, seed=3)[0]
    picture = synthetic.draw_scene(question.scenes[0])
    texts = ["\n\n".join(c["steps"]) for c in question.candidates]
    prompts = [[{"role": "user", "content": question.question.text}]] * len(texts)
    plain = reward(prompts=prompts, completions=texts, images=[[picture]] * len(texts))
    chat = reward(
        prompts=prompts,
        completions=[[{"role": "assistant", "content": text}] for text in texts],
        images=[[picture]] * len(texts),
    )
    assert plain == pytest.approx(chat, abs=1e-6)
    for text, value in zip(texts, plain, strict=True):
        alone = score_traces(
            reward.model,
            reward.processor,
            [{"question": question.question.text, "steps": split_steps(text), "images": [picture]}],
            progress=False,
        )[0]
        assert value == pytest.approx(min(alone), abs=1e-5)
    mean = PRMReward(reward.model, reward.processor, aggregation="mean", name="prm_mean")
    assert mean.__name__ == "prm_mean"
    last = mean(prompts=prompts[-1:], completions=texts[-1:], images=[[picture]])[0]
    assert last == pytest.approx(sum(alone) / len(alone), abs=1e-5)


def test_bad_completions_and_images_get_the_fallback_and_a_counted_warning(
    reward: PRMReward, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    question = pool_questions(8, seed=5)[0]
    picture = synthetic.draw_scene(question.scenes[0])
    good = "\n\n".join(question.candidates[0]["steps"])
    broken_png = tmp_path / "broken.png"
    broken_png.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    prompt = [{"role": "user", "content": question.question.text}]
    completions = [good, "", "  \n\n \t ", good, good, "The circle <|im_start|>assistant\n+ is red.", good]
    images = [[picture], [picture], [picture], [str(broken_png)], [{"bytes": b"garbage", "path": None}],
              [picture], [{"bytes": None, "path": str(tmp_path / "missing.png")}]]  # fmt: skip
    reward.fallbacks.clear()
    with caplog.at_level(logging.WARNING, logger="mprm_hf.reward"):
        rewards = reward(prompts=[prompt] * len(completions), completions=completions, images=images)
    assert len(rewards) == len(completions)
    assert 0.0 < rewards[0] < 1.0
    assert rewards[1:] == [0.0] * 6
    assert reward.fallbacks == {"no steps": 2, "unreadable image": 3, "unscorable trace": 1}
    (message,) = [r.getMessage() for r in caplog.records if r.name == "mprm_hf.reward"]
    assert "6 of 7 completions got the fallback reward 0" in message
    assert (
        "unreadable image (3)" in message and "no steps (2)" in message and "unscorable trace (1)" in message
    )
    # the good completion's reward does not depend on its bad neighbours
    assert rewards[0] == pytest.approx(reward(prompts=[prompt], completions=[good], images=[[picture]])[0])
    # text the processor reads as its own tokens, and a lazily opened picture whose file is cut short
    truncated = tmp_path / "truncated.png"
    picture.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    lazy = Image.open(truncated)
    reward.fallbacks.clear()
    odd = reward(
        prompts=[prompt] * 4,
        completions=["The square is <|image_pad|> red.", "So <|video_pad|>.", good, good],
        images=[[picture], [picture], [lazy], [picture]],
    )
    assert odd[:3] == [0.0, 0.0, 0.0] and odd[3] == pytest.approx(rewards[0], abs=1e-5)
    assert reward.fallbacks == {"unscorable trace": 2, "unreadable image": 1}
    custom = PRMReward(reward.model, reward.processor, fallback_reward=-1.0)
    assert custom(prompts=[prompt], completions=[""], images=[[picture]]) == [-1.0]


def test_bad_arguments_are_one_line_errors(reward: PRMReward, tmp_path: Path) -> None:
    with pytest.raises(MPRMError, match="unknown aggregation 'median'"):
        PRMReward(reward.model, reward.processor, aggregation="median")
    with pytest.raises(MPRMError, match="needs its processor"):
        PRMReward(reward.model)
    with pytest.raises(MPRMError, match="model folder not found"):
        PRMReward(tmp_path / "nope")
    with pytest.raises(MPRMError, match="2 prompts but 1 completions"):
        reward(prompts=["a", "b"], completions=["x"])
    loaded = (reward.model, reward.processor)
    for kwargs, message in [
        ({"device": "bogus"}, "device 'bogus'"),
        ({"step_format": "nope"}, "unknown step format 'nope'"),
        ({"fallback_reward": float("nan")}, "fallback_reward must be finite"),
        ({"fallback_reward": "x"}, "fallback_reward must be a number"),
        ({"max_length": 0}, "max_length must be a positive integer"),
        ({"batch_size": "8"}, "batch_size must be an integer"),
        ({"step_separator": ""}, "step_separator must be a non-empty string"),
        ({"dtype": "bfloat16"}, "dtype and adapter apply to a PRM loaded from a folder"),
    ]:
        with pytest.raises(MPRMError, match=message):
            PRMReward(*loaded, **kwargs)
    if not torch.cuda.is_available():
        with pytest.raises(MPRMError, match="device 'cuda'"):
            PRMReward(*loaded, device="cuda")
    not_a_model = tmp_path / "run"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    with pytest.raises(MPRMError, match="not a model transformers can load"):
        PRMReward(not_a_model)


def test_images_come_from_the_image_column_or_the_prompt(reward: PRMReward) -> None:
    question = pool_questions(8, seed=6)[0]
    picture = synthetic.draw_scene(question.scenes[0])
    text = "\n\n".join(question.candidates[0]["steps"])
    plain = [{"role": "user", "content": question.question.text}]
    inline = [{"role": "user", "content": [{"type": "image", "image": picture},
                                           {"type": "text", "text": question.question.text}]}]  # fmt: skip
    from_column = reward(prompts=[plain], completions=[text], image=[picture])
    from_prompt = reward(prompts=[inline], completions=[text])
    assert from_column == pytest.approx(from_prompt, abs=1e-6)


def test_step_rule_and_final_answers() -> None:
    assert split_steps("\n  First,\nstill first.\n\n\nSecond.\n \t\nThird.  \n\n") == [
        "First,\nstill first.",
        "Second.",
        "Third.",
    ]
    assert split_steps("a Step b Step c", " Step ") == ["a", "b", "c"]
    with pytest.raises(MPRMError):
        split_steps("a", "")
    assert final_answer("The circle is red.\n\nSo the circle is red, so the answer is Red.") == "red"
    assert final_answer("(B)") == "b" and final_answer("  2. ") == "2" and final_answer("") == ""
    assert final_answer('"Red".') == "red"
    assert final_answer("So the answer is red.\n\nI hope this helps.") == "red"
    completions = [[{"role": "assistant", "content": "top left"}], "So the answer is 3.", "blue"]
    assert answer_accuracy(completions, ["top left", "3", "red"]) == [1.0, 1.0, 0.0]


def test_grpo_trainer_trains_the_tiny_vlm_with_the_prm_as_its_only_reward(
    reward: PRMReward, tmp_path: Path
) -> None:
    """A real GRPOTrainer run on the CPU: the shipped tiny base VLM as the policy, `PRMReward` as its only
    reward, a dataset of questions with pictures; the rewards reach TRL's logs."""
    from trl import GRPOConfig, GRPOTrainer

    from mprm_hf.embedded import embedded_base
    from mprm_hf.modeling import load_model_and_processor

    policy, processor = load_model_and_processor(embedded_base("pretrained"))
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    records = []
    for index, question in enumerate(pool_questions(8, seed=7)):
        synthetic.save_png(synthetic.draw_scene(question.scenes[0]), pictures / f"{index}.png")
        records.append({"question": question.question.text, "images": [f"pictures/{index}.png"],
                        "answer": question.question.answer})  # fmt: skip
    dataset = question_dataset(records, tmp_path)
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        max_steps=3,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        temperature=2.0,  # the base is sure of its answers: two samples must differ for an advantage
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
    )
    calls_before, scored_before = reward.calls, reward.completions_scored
    trainer = GRPOTrainer(
        model=policy, args=args, reward_funcs=[reward], train_dataset=dataset, processing_class=processor
    )
    before = {name: value.detach().clone() for name, value in policy.named_parameters()}
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "rewards/prm/mean" in entry]
    assert len(logged) == 3 and reward.calls == calls_before + 3
    assert reward.completions_scored == scored_before + 3 * 4
    assert all(0.0 < entry["rewards/prm/mean"] < 1.0 for entry in logged)
    assert all(entry["prm/fallback_fraction"] == 0.0 for entry in logged)
    # The last batch's rewards, as TRL keeps them for its completions table, are PRMReward's of those
    # completions (here with the pictures read from TRL's multimodal prompts).
    prompts, completions = list(trainer._logs["prompt"]), list(trainer._logs["completion"])
    assert list(trainer._logs["rewards"]["prm"]) == pytest.approx(
        reward(prompts=prompts, completions=completions), abs=1e-5
    )
    assert logged[-1]["rewards/prm/mean"] == pytest.approx(sum(trainer._logs["rewards"]["prm"]) / 4, abs=1e-5)
    assert next(iter(reward.model.parameters())).requires_grad is False
    assert not reward.model.training
    changed = any(not value.equal(before[name]) for name, value in trainer.model.named_parameters())
    assert changed, "GRPO did not update the policy"


def test_grpo_command_writes_a_policy_with_its_results(learned_prm: Path, tmp_path: Path, capsys) -> None:
    """`mprm-hf grpo recipes/tiny-cpu/grpo.yaml` end to end, short, on a pool of questions alone: a folder
    plain transformers loads, with grpo.json (before and after), the learning curve and a card, written
    beside the Trainer's checkpoints, which stay; a second run resumes from the last one."""
    from transformers import AutoModelForImageTextToText

    from mprm_hf.cli import main

    pool = tmp_path / "questions"
    (pool / "pictures").mkdir(parents=True)
    lines = []
    for index, question in enumerate(pool_questions(24, seed=8)[:16]):
        synthetic.save_png(synthetic.draw_scene(question.scenes[0]), pool / "pictures" / f"{index}.png")
        lines.append(json.dumps({"question": question.question.text, "images": [f"pictures/{index}.png"],
                                 "answer": question.question.answer}))  # fmt: skip
    (pool / "pool.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "policy"
    argv = ["grpo", str(GRPO_RECIPE), "--reward_model", str(learned_prm), "--output_dir", str(out),
            "--dataset_name", str(pool), "--eval_questions", "4", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--num_generations", "2", "--logging_steps", "1",
            "--save_strategy", "steps", "--save_steps", "1", "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "grpo.json").read_text())
    assert record["steps"] == 2 and record["train_questions"] == 12
    assert record["before"]["questions"] == record["after"]["questions"] == 4
    assert len(record["after"]["answers"]) == 4 and 0.0 <= record["after"]["accuracy"] <= 1.0
    assert [point[0] for point in record["learning_curve"]["prm_reward"]] == [1, 2]
    assert len(record["learning_curve"]["accuracy"]) == 2
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert Image.open(out / "learning_curve.png").size[0] > 0
    card = (out / "README.md").read_text()
    assert "GRPO" in card and str(tmp_path) not in card and str(tmp_path) not in json.dumps(record)
    AutoModelForImageTextToText.from_pretrained(out)

    assert main([*argv[:-8], "--max_steps", "3", "--resume_from_checkpoint", "true", "--logging_steps", "1",
                 "--disable_tqdm", "true"]) == 0  # fmt: skip
    resumed = json.loads((out / "grpo.json").read_text())
    assert resumed["steps"] == 3 and [p[0] for p in resumed["learning_curve"]["prm_reward"]][-1] == 3

    capsys.readouterr()
    for extra, message in [
        (["--reward_model", str(pool)], "not a model transformers can load"),
        (["--eval_questions", "0"], "field 'eval_questions' must be at least 1"),
        (["--eval_questions", "16"], "16 questions, but eval_questions=16 are held out"),
    ]:
        assert main([*argv, *extra]) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]  # after any loading progress bars
        assert error.startswith("mprm-hf grpo: error: ") and message in error
