"""`PRMReward`: a trained process reward model as a TRL reward function, for online RL of a VLM policy.

TRL's `GRPOTrainer` calls every reward function as `reward_func(prompts=..., completions=...,
completion_ids=..., **columns)`, the dataset's columns (its `image` or `images` among them) as keyword lists.
`PRMReward` splits each completion into steps by the project's one step rule (`split_steps`), scores every
step of every completion with the PRM (one forward pass per completion, batched: `score_traces`, the path
evaluation and best-of-N use) and aggregates the step rewards into one number by the project's rules
(`aggregate_rewards`: min, mean, last, product):

    from trl import GRPOTrainer
    from mprm_hf import PRMReward

    trainer = GRPOTrainer(model=policy, reward_funcs=[PRMReward("outputs/tiny-cpu", aggregation="min")],
                          train_dataset=dataset_with_images)

A completion the PRM cannot score (no steps, an unreadable image, a step that breaks the chat layout) gets
`fallback_reward` and a counted warning, never an exception that stops the run. Scoring runs in eval mode
without gradients, on the device and in the dtype the PRM was loaded with, whatever the policy's are.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mprm_hf.errors import MPRMError, first_line
from mprm_hf.rerank import AGGREGATES, aggregate_rewards
from mprm_hf.scoring import score_traces
from mprm_hf.step_format import PARAGRAPH, get_step_format, load_image, split_steps

logger = logging.getLogger(__name__)

NO_STEPS = "no steps"
BAD_IMAGE = "unreadable image"
BAD_COMPLETION = "unreadable completion"
UNSCORABLE = "unscorable trace"
TOO_LONG = "first step over max_length"


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "\n".join(
            part["text"] if isinstance(part, dict) else part
            for part in content
            if isinstance(part, str) or (isinstance(part, dict) and isinstance(part.get("text"), str))
        )
    raise MPRMError(f"a message content is a {type(content).__name__}, not text or a list of parts")


def completion_text(completion: Any) -> str:
    """A completion as text: a plain string, or the assistant turns of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        turns = [m for m in completion if m.get("role", "assistant") == "assistant"]
        return "\n\n".join(message_text(m.get("content") or "") for m in turns)
    raise MPRMError(f"a completion is a {type(completion).__name__}, not text or a list of messages")


def prompt_question(prompt: Any) -> str:
    """The question a prompt asks: a plain string as it is, else the text of its last user turn."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return message_text(users[-1].get("content") or "")
    raise MPRMError(f"a prompt is a {type(prompt).__name__}, not text or a list of messages with a user turn")


def prompt_images(prompt: Any) -> list[Any]:
    """Images carried inside a conversational prompt's parts (`{"type": "image", "image": ...}`)."""
    if not isinstance(prompt, (list, tuple)):
        return []
    return [
        part["image"]
        for message in prompt
        if isinstance(message, dict) and isinstance(message.get("content"), (list, tuple))
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image" and part.get("image") is not None
    ]


def _images_of(index: int, prompt: Any, columns: dict[str, Any]) -> list[Any]:
    """Completion `index`'s images: the `images` column (a list each), else `image` (one each), else the
    prompt's own image parts."""
    if columns.get("images") is not None:
        value = columns["images"][index]
        return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
    if columns.get("image") is not None:
        value = columns["image"][index]
        return [] if value is None else [value]
    return prompt_images(prompt)


def check_reward_options(aggregation: str, step_separator: str, batch_size: int) -> None:
    """The options of a `PRMReward` that can be checked before any model is loaded (`mprm-hf grpo` checks
    them while parsing its recipe)."""
    if aggregation not in AGGREGATES:
        raise MPRMError(f"unknown aggregation {aggregation!r} (choose one of: {', '.join(AGGREGATES)})")
    if not isinstance(step_separator, str) or not step_separator:
        raise MPRMError("step_separator must be a non-empty string")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MPRMError(f"batch_size must be an integer of at least 1 (got {batch_size!r})")


def default_device() -> torch.device:
    """This process's accelerator (its `LOCAL_RANK` under `accelerate launch`), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


class PRMReward:
    """A trained PRM (folder, Hub id, or a loaded model with its processor) as a TRL reward function.

    Args:
        model: the PRM: a folder or Hub id (loaded by `load_model_and_processor`), or a loaded model.
        processor: the PRM's processor, when `model` is a loaded model.
        aggregation: how the step rewards become one reward (`min`, `mean`, `last`, `product`).
        step_separator: what separates steps in a completion; the default `"\\n\\n"` is the paragraph rule
            (a blank line ends a step), any other string is split on literally.
        step_format: the PRM's input layout; default, the one it was trained with.
        batch_size: completions per forward pass.
        device: where the PRM runs (default: this process's GPU, else the CPU), never moved to the policy's.
        dtype, adapter: the precision to load a folder or Hub id in (default: the checkpoint's) and a LoRA
            adapter folder to apply on top of it.
        max_length: longest PRM input in tokens (default: the PRM's context); later steps go unscored.
        fallback_reward: the reward of a completion the PRM cannot score.
        name: the name TRL logs the reward under (`rewards/<name>/mean`).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        processor: Any = None,
        *,
        aggregation: str = "min",
        step_separator: str = PARAGRAPH,
        step_format: str | None = None,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        adapter: str | os.PathLike[str] | None = None,
        max_length: int | None = None,
        fallback_reward: float = 0.0,
        name: str = "prm",
    ) -> None:
        check_reward_options(aggregation, step_separator, batch_size)
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise MPRMError(f"max_length must be a positive integer or None (got {max_length!r})")
        if isinstance(fallback_reward, bool) or not isinstance(fallback_reward, (int, float)):
            raise MPRMError(f"fallback_reward must be a number (got {fallback_reward!r})")
        if not math.isfinite(fallback_reward):
            raise MPRMError(f"fallback_reward must be finite (got {fallback_reward!r})")
        if step_format is not None:
            get_step_format(step_format)  # an unknown name fails now, not as a fallback on every call
        try:
            self.device = torch.device(device) if device is not None else default_device()
        except (RuntimeError, TypeError) as error:
            raise MPRMError(f"PRMReward: device {device!r}: {first_line(error)}") from None
        if isinstance(model, (str, os.PathLike)):
            from mprm_hf.modeling import load_model_and_processor

            self.source = str(model)
            model, processor = load_model_and_processor(model, adapter=adapter, dtype=dtype)
        else:
            if processor is None:
                raise MPRMError("PRMReward: a loaded model needs its processor (PRMReward(model, processor))")
            if dtype is not None or adapter is not None:
                raise MPRMError("PRMReward: dtype and adapter apply to a PRM loaded from a folder or Hub id")
            self.source = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        try:
            self.model = model.to(self.device).eval()
        except (RuntimeError, AssertionError) as error:  # e.g. cuda on a machine without it
            raise MPRMError(f"PRMReward: device {str(self.device)!r}: {first_line(error)}") from None
        self.model.requires_grad_(False)
        self.processor = processor
        self.aggregation = aggregation
        self.step_separator = step_separator
        self.step_format = step_format
        self.batch_size = batch_size
        self.max_length = max_length
        self.fallback_reward = float(fallback_reward)
        self.__name__ = name
        self.fallbacks: Counter[str] = Counter()  # completions that got the fallback reward, by reason
        self.calls = 0
        self.completions_scored = 0

    def __repr__(self) -> str:
        return f"PRMReward({self.source!r}, aggregation={self.aggregation!r})"

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **columns: Any,
    ) -> list[float]:
        """One reward per completion (TRL's reward-function signature)."""
        if len(prompts) != len(completions):
            raise MPRMError(f"PRMReward: {len(prompts)} prompts but {len(completions)} completions")
        rewards = [self.fallback_reward] * len(completions)
        step_rewards: list[list[float]] = [[] for _ in completions]
        problems: Counter[str] = Counter()
        first_problem: dict[str, str] = {}
        traces, owners = [], []
        for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            where = f"completion {index}"
            try:
                steps = split_steps(completion_text(completion), self.step_separator)
                question = prompt_question(prompt)
            except MPRMError as error:
                _note(problems, first_problem, BAD_COMPLETION, f"{where}: {error}")
                continue
            if not steps:
                _note(
                    problems, first_problem, NO_STEPS, f"{where}: no steps in {completion_text(completion)!r}"
                )
                continue
            try:
                images = [load_image(image, where) for image in _images_of(index, prompt, columns)]
            except MPRMError as error:
                _note(problems, first_problem, BAD_IMAGE, str(error))
                continue
            traces.append({"question": question, "steps": steps, "images": images})
            owners.append(index)
        for index, scores in zip(owners, self._score(traces, owners, problems, first_problem), strict=True):
            if scores is None:
                continue
            if not scores:
                _note(problems, first_problem, TOO_LONG, f"completion {index}: its first step does not fit")
                continue
            step_rewards[index] = scores
            rewards[index] = aggregate_rewards(scores, self.aggregation)
        self._report(len(completions), problems, first_problem, step_rewards, columns)
        return rewards

    def _score(
        self,
        traces: list[dict[str, Any]],
        owners: list[int],
        problems: Counter[str],
        first_problem: dict[str, str],
    ) -> list[list[float] | None]:
        """Step rewards of every trace, batched; when a batch refuses a trace, each is scored alone so only
        the bad one falls back."""
        if not traces:
            return []
        # The PRM's own dtype: autocast of a mixed-precision policy must not reach it.
        with torch.autocast(self.device.type, enabled=False):
            try:
                return list(self._score_batch(traces))
            except ValueError:  # an MPRMError, or the processor refusing a text by its own checks
                pass
            results: list[list[float] | None] = []
            for index, trace in zip(owners, traces, strict=True):
                try:
                    results.append(self._score_batch([trace])[0])
                except ValueError as error:
                    _note(problems, first_problem, UNSCORABLE, f"completion {index}: {first_line(error)}")
                    results.append(None)
            return results

    def _score_batch(self, traces: list[dict[str, Any]]) -> list[list[float]]:
        return score_traces(
            self.model,
            self.processor,
            traces,
            batch_size=self.batch_size,
            step_format=self.step_format,
            progress=False,
            max_length=self.max_length,
        )

    def _report(
        self,
        n_completions: int,
        problems: Counter[str],
        first_problem: dict[str, str],
        step_rewards: list[list[float]],
        columns: dict[str, Any],
    ) -> None:
        """Count the fallbacks, warn once per call that had any, and hand TRL its metrics and table column."""
        fallen = sum(problems.values())
        self.calls += 1
        self.completions_scored += n_completions - fallen
        self.fallbacks.update(problems)
        if fallen:
            reasons = ", ".join(f"{reason} ({count})" for reason, count in problems.most_common())
            first = first_problem[problems.most_common(1)[0][0]]
            logger.warning(
                "%s: %d of %d completions got the fallback reward %g: %s; first: %s (%d so far)",
                self.__name__,
                fallen,
                n_completions,
                self.fallback_reward,
                reasons,
                first,
                sum(self.fallbacks.values()),
            )
        log_metric: Callable[[str, float], None] | None = columns.get("log_metric")
        if callable(log_metric):
            log_metric(f"{self.__name__}/fallback_fraction", fallen / max(1, n_completions))
            scored = [len(scores) for scores in step_rewards if scores]
            if scored:
                log_metric(f"{self.__name__}/steps", sum(scored) / len(scored))
        log_extra: Callable[[str, list], None] | None = columns.get("log_extra")
        if callable(log_extra):
            log_extra(
                f"{self.__name__}_steps", [" ".join(f"{r:.2f}" for r in scores) for scores in step_rewards]
            )


def _note(problems: Counter[str], first_problem: dict[str, str], reason: str, message: str) -> None:
    problems[reason] += 1
    first_problem.setdefault(reason, message)
