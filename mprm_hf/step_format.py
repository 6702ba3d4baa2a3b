"""The one input builder of training and scoring: how a reasoning trace becomes model inputs, and where
each step's reward is read.

Two formats (docs/definitions.md#model-and-training):

* ``prm-token`` (the reference's): one user turn
  ``Question: {q}\\nProcess: {s1}<prm>\\n\\n{s2}<prm>...{sn}<prm>``, closed by the chat template (no
  generation prompt). Steps are joined with ``"\\n\\n"`` after each marker, as the reference's training
  data is written; there is no other join anywhere. The reward of step i is read from the logits AT the
  i-th ``<prm>`` token, i.e. the model's prediction of the token that follows the marker, compared over
  the two tokens ``Yes`` (positive) and ``No`` (negative).
* ``visualprm`` (VisualPRM's): a PRM system prompt, then one user turn per step (the first one is
  ``### Question:\\n{q}\\n\\n### Solution Process:\\n{s1}``, the next ones the bare step) each answered by
  the assistant. The answer slot always holds ``+`` in the input, whatever the label (as VisualPRM
  scores: previous steps read as accepted), so the input never depends on the labels. The reward of
  step i is read from the logits at the last token of the i-th assistant header, the position whose
  logits predict the answer slot, compared over ``+`` (positive) and ``-`` (negative).

In both formats the images of a trace (any number) come first in the (first) user turn, in order;
``<image>`` / ``<imageN>`` tags are removed from the question text, and step texts are stripped.

Truncation rule (``max_length``): a trace keeps the longest prefix of its steps whose encoding (the same
chat rendering with the later steps left out) fits in ``max_length`` tokens; the dropped tail steps are
never scored or trained on, and ``n_steps`` says how many were kept, so callers count what was cut. A
trace whose first step alone does not fit gets ``n_steps == 0`` and a blank placeholder row (the chat
rendering of an empty question with no image and no step: a few tokens, no reward position), so the
batch stays valid and the caller counts and reports it; `steps_that_fit` finds such traces beforehand.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mprm_hf.errors import MPRMError, first_line

IMAGE_TAG = re.compile(r"<image\d*>\n?")

VISUALPRM_SYSTEM_PROMPT = (
    "You are a process reward model. You will be given a problem with its image(s) and, one turn at a "
    "time, the steps of a proposed solution. After each step, judge whether the solution is correct up to "
    "and including that step.\n\n"
    "- The first turn gives the problem and the first step; each later turn gives the next step.\n"
    '- Answer "+" if the solution is correct so far, or "-" if this step or an earlier one is wrong.\n'
    '- Answer with "+" or "-" only.'
)


@dataclass(frozen=True)
class StepFormat:
    """How steps are laid out and which two tokens carry a step's reward."""

    name: str
    positive_token: str
    negative_token: str
    # `prm-token`: the special token placed after every step; None for the multi-turn format.
    marker_token: str | None = None
    system_prompt: str | None = None
    step_separator: str = "\n\n"

    def messages(self, prompt: str, steps: Sequence[str], n_images: int) -> list[dict[str, Any]]:
        """The chat messages of one trace (the chat template turns them into text)."""
        question = clean_question(prompt)
        steps = [step.strip() for step in steps]
        images: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        if self.marker_token is not None:
            process = self.step_separator.join(step + self.marker_token for step in steps)
            text = f"Question: {question}\nProcess: {process}"
            return [{"role": "user", "content": [*images, {"type": "text", "text": text}]}]
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        for index, step in enumerate(steps):
            if index == 0:
                text = f"### Question:\n{question}\n\n### Solution Process:\n{step}"
                content = [*images, {"type": "text", "text": text}]
            else:
                content = [{"type": "text", "text": step}]
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": self.positive_token}]})
        return messages


STEP_FORMATS: dict[str, StepFormat] = {
    "prm-token": StepFormat(
        name="prm-token", positive_token="Yes", negative_token="No", marker_token="<prm>"
    ),
    "visualprm": StepFormat(
        name="visualprm", positive_token="+", negative_token="-", system_prompt=VISUALPRM_SYSTEM_PROMPT
    ),
}


PARAGRAPH = "\n\n"
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def split_steps(text: str, separator: str = PARAGRAPH) -> list[str]:
    """The steps of a free-text solution, stripped, empty ones left out.

    With the default separator, steps are paragraphs: a blank line (whitespace allowed on it) ends a step, so
    one step may span several lines, the layout every step format renders and policies are asked to write.
    Any other separator is split on literally (e.g. `"Step"` markers or `"\n"`)."""
    if not separator:
        raise MPRMError("the step separator must not be empty")
    parts = _BLANK_LINE.split(text) if separator == PARAGRAPH else text.split(separator)
    return [part.strip() for part in parts if part.strip()]


def get_step_format(name: str | StepFormat) -> StepFormat:
    """The format by name (`prm-token` or `visualprm`); a `StepFormat` is returned as is."""
    if isinstance(name, StepFormat):
        return name
    if name not in STEP_FORMATS:
        raise MPRMError(f"unknown step format {name!r} (choose one of: {', '.join(STEP_FORMATS)})")
    return STEP_FORMATS[name]


DEFAULT_STEP_FORMAT = "prm-token"
CONFIG_KEY = "prm_step_format"  # written into a trained PRM's config.json


def model_step_format(model: Any, requested: str | StepFormat | None = None) -> StepFormat:
    """The format to score `model` with: `requested`, else the one it was trained with, else prm-token.

    A PRM's rewards mean nothing in another layout, so the trained format travels in its config."""
    saved = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if requested is None:
        return get_step_format(saved or DEFAULT_STEP_FORMAT)
    fmt = get_step_format(requested)
    if saved and saved != fmt.name:
        # warnings, not logging: a runner scoring batch after batch shows it once, not once per batch
        warnings.warn(
            f"scoring with step format {fmt.name!r}, but the model was trained with {saved!r}", stacklevel=2
        )
    return fmt


def clean_question(prompt: str) -> str:
    """The question without `<image>` / `<imageN>` tags: images are placed by the format, not the text."""
    return IMAGE_TAG.sub("", prompt).strip()


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _single_token_id(tokenizer: Any, token: str) -> int | None:
    ids = tokenizer.encode(token, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def reward_token_ids(processor: Any, fmt: StepFormat | str) -> tuple[int, int]:
    """(positive, negative) token ids whose two logits give a step's reward."""
    fmt = get_step_format(fmt)
    tokenizer = _tokenizer(processor)
    ids = []
    for token in (fmt.positive_token, fmt.negative_token):
        token_id = _single_token_id(tokenizer, token)
        if token_id is None:
            raise MPRMError(
                f"step format {fmt.name!r}: {token!r} is not a single token of this tokenizer; "
                "call prepare_model_and_processor(model, processor, fmt) first"
            )
        ids.append(token_id)
    return ids[0], ids[1]


def prepare_model_and_processor(model: Any, processor: Any, fmt: StepFormat | str) -> tuple[Any, Any]:
    """Record the format in the model's config, add the format's marker token and any reward token that is
    not a single token, then resize the embeddings to the tokenizer (a no-op for a model that already has
    them: the tiny model, a trained PRM)."""
    fmt = get_step_format(fmt)
    model.config.update({CONFIG_KEY: fmt.name})  # saved with the checkpoint, read by `model_step_format`
    tokenizer = _tokenizer(processor)
    if fmt.marker_token is not None and fmt.marker_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"extra_special_tokens": [fmt.marker_token]}, replace_extra_special_tokens=False
        )
    missing = [t for t in (fmt.positive_token, fmt.negative_token) if _single_token_id(tokenizer, t) is None]
    if missing:
        tokenizer.add_tokens(missing)
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model, processor


MAX_IMAGE_PIXELS = 36_000_000
"""Images larger than this (6000 x 6000) are refused before they are decoded: a 450 KB PNG can hold
12000 x 12000 pixels and take gigabytes to decode. Every processor downsizes far below it anyway."""
MAX_IMAGE_SIDE = 2048
"""Images are downscaled (aspect kept) so that no side exceeds this before they reach the processor."""


def load_image(image: Any, where: str) -> Image.Image:
    """An image (a PIL image, a path, or an undecoded `datasets.Image` value `{"bytes", "path"}`) as RGB, at
    most MAX_IMAGE_SIDE a side; one-line errors name `where`."""
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        encoded = image.get("bytes")
        image = io.BytesIO(encoded) if isinstance(encoded, (bytes, bytearray)) else image.get("path")
        if image is None:
            raise MPRMError(f"{where}: an image value with neither bytes nor a path")
    if isinstance(image, Image.Image):
        try:  # a lazily opened image decodes here (load), so a truncated file fails now
            image.load()
            return _bounded(image.convert("RGB") if image.mode != "RGB" else image)
        except (OSError, ValueError) as error:
            raise MPRMError(f"{where}: cannot read an image: {first_line(error)}") from None
    if isinstance(image, (str, Path, io.BytesIO)):
        shown = "<bytes>" if isinstance(image, io.BytesIO) else str(image)
        try:
            with Image.open(image) as opened:
                width, height = opened.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise MPRMError(
                        f"{where}: image {shown!r} is {width} x {height} pixels, over the limit of "
                        f"{MAX_IMAGE_PIXELS:,} (mprm_hf.step_format.MAX_IMAGE_PIXELS); downscale it first"
                    )
                opened.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # JPEG decodes at a reduced size
                return _bounded(opened.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise MPRMError(f"{where}: cannot read image {shown!r}: {first_line(error)}") from None
    raise MPRMError(f"{where}: field 'images' holds a {type(image).__name__}, not an image or a path")


def _bounded(image: Image.Image) -> Image.Image:
    if max(image.size) <= MAX_IMAGE_SIDE:
        return image
    image = image.copy()
    image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return image


def check_trace_fields(trace: dict[str, Any], where: str) -> None:
    """Raise a one-line error when a trace's text fields cannot be encoded (images are checked on loading)."""
    prompt, steps = trace.get("prompt"), trace.get("steps")
    if not isinstance(prompt, str):
        raise MPRMError(f"{where}: field 'prompt' is not a string ({type(prompt).__name__})")
    if not isinstance(steps, (list, tuple)) or not steps:
        raise MPRMError(f"{where}: field 'steps' must be a non-empty list of strings")
    for step_index, step in enumerate(steps):
        if not isinstance(step, str) or not step.strip():
            raise MPRMError(f"{where}: field 'steps[{step_index}]' is empty or not a string")


def _validated(traces: Sequence[dict[str, Any]]) -> list[tuple[str, list[str], list[Image.Image]]]:
    checked = []
    for index, trace in enumerate(traces):
        where = f"trace {index}" + (f" (id {trace['id']!r})" if trace.get("id") is not None else "")
        check_trace_fields(trace, where)
        images = [load_image(image, where) for image in trace.get("images") or []]
        checked.append((trace["prompt"], list(trace["steps"]), images))
    return checked


def _render(processor: Any, fmt: StepFormat, prompt: str, steps: Sequence[str], n_images: int) -> str:
    if (
        getattr(processor, "chat_template", None) is None
        and getattr(_tokenizer(processor), "chat_template", None) is None
    ):
        raise MPRMError("this processor has no chat template; the step formats need one")
    return processor.apply_chat_template(fmt.messages(prompt, steps, n_images), tokenize=False)


def assistant_header_ids(processor: Any) -> list[int]:
    """Token ids of the assistant header the chat template writes before an answer: where `visualprm`
    reads a reward, and where a VQA answer starts."""
    user = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    closed = processor.apply_chat_template(user, tokenize=False)
    opened = processor.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    if not opened.startswith(closed) or opened == closed:
        raise MPRMError("cannot find the assistant header in this chat template")
    return _tokenizer(processor).encode(opened[len(closed) :], add_special_tokens=False)


def _score_positions(
    ids: list[int], fmt: StepFormat, marker_id: int | None, header: list[int], positive: int
) -> list[int]:
    """Sequence indices whose logits score the steps, in step order."""
    if marker_id is not None:
        return [index for index, token in enumerate(ids) if token == marker_id]
    width = len(header)
    return [
        index + width - 1
        for index, token in enumerate(ids[: len(ids) - width])
        if token == header[0] and ids[index : index + width] == header and ids[index + width] == positive
    ]


def _tokenize(processor: Any, texts: list[str], images: list[list[Image.Image]]) -> dict[str, Any]:
    flat = [image for trace_images in images for image in trace_images]
    return processor(
        text=texts,
        images=flat or None,
        padding="longest",
        padding_side="right",
        add_special_tokens=False,
        return_tensors="pt",
    )


def special_tokens(processor: Any) -> list[str]:
    """The texts the tokenizer reads as special tokens (chat turns, image and video placeholders, the step
    marker): a trace's own text may not contain them, or its layout would shift."""
    added = getattr(_tokenizer(processor), "added_tokens_decoder", {}) or {}
    return sorted({token.content for token in added.values() if getattr(token, "special", False)}, key=len)


def _refuse_special_tokens(processor: Any, traces: Sequence[dict[str, Any]]) -> None:
    tokens = special_tokens(processor)
    if not tokens:
        return
    pattern = re.compile("|".join(map(re.escape, reversed(tokens))))
    for index, trace in enumerate(traces):
        fields = [("prompt", trace["prompt"])] + [
            (f"steps[{j}]", step) for j, step in enumerate(trace["steps"])
        ]
        for name, text in fields:
            found = pattern.search(text)
            if found:
                raise MPRMError(
                    f"trace {index}: field '{name}' holds the special token {found.group()!r} (a trace's text "
                    "may not contain the chat template's, the processor's or the step marker's own tokens)"
                )


def _plan(processor: Any, fmt: StepFormat, traces: Sequence[dict[str, Any]], max_length: int | None):
    """Render and tokenize every trace, find its score positions, and apply the truncation rule."""
    checked = _validated(traces)
    _refuse_special_tokens(processor, [{"prompt": clean_question(p), "steps": st} for p, st, _ in checked])
    tokenizer = _tokenizer(processor)
    positive, _ = reward_token_ids(processor, fmt)
    marker_id = None
    header: list[int] = []
    if fmt.marker_token is not None:
        marker_id = tokenizer.convert_tokens_to_ids(fmt.marker_token)
        if (
            marker_id is None
            or marker_id == tokenizer.unk_token_id
            or _single_token_id(tokenizer, fmt.marker_token) is None
        ):
            raise MPRMError(
                f"step format {fmt.name!r}: {fmt.marker_token!r} is not a token of this tokenizer; "
                "call prepare_model_and_processor(model, processor, fmt) first"
            )
    else:
        header = assistant_header_ids(processor)
    texts = [_render(processor, fmt, prompt, steps, len(images)) for prompt, steps, images in checked]
    batch = _tokenize(processor, texts, [images for _, _, images in checked])
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    positions, kept = [], []
    for index, (_, steps, _) in enumerate(checked):
        ids = batch["input_ids"][index, : lengths[index]].tolist()
        found = _score_positions(ids, fmt, marker_id, header, positive)
        if len(found) != len(steps):
            raise MPRMError(
                f"trace {index}: {len(steps)} steps but {len(found)} reward positions in its encoding "
                f"(step format {fmt.name!r}; does a step contain the marker or chat-template tokens?)"
            )
        n_keep = len(steps)
        if max_length is not None and lengths[index] > max_length:
            # The k-step prefix ends like the full trace does, after the k-th reward position.
            tail = lengths[index] - 1 - found[-1]
            n_keep = sum(1 for position in found if position + 1 + tail <= max_length)
        positions.append(found[:n_keep])
        kept.append(n_keep)
    return checked, texts, batch, positions, kept, (marker_id, header, positive)


def steps_that_fit(
    processor: Any, fmt: StepFormat | str, traces: Sequence[dict[str, Any]], *, max_length: int
) -> list[int]:
    """How many leading steps of each trace fit in `max_length` tokens (0: not even the first step).

    Meant for a `datasets` map before training, so that traces which do not fit are counted and dropped
    there rather than failing a batch.
    """
    return _plan(processor, get_step_format(fmt), traces, max_length)[4]


def encode_traces(
    processor: Any,
    fmt: StepFormat | str,
    traces: Sequence[dict[str, Any]],
    *,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Encode traces `{"prompt", "steps", "images", ["labels"], ["id"]}` as one padded batch.

    Returns the processor's batch (`input_ids`, `attention_mask`, `pixel_values`, `image_grid_thw`, ...;
    right padding to the longest trace, images processed in one call) plus:
    `step_positions` LongTensor [batch, max_steps], -1 padded: the index whose logits score each step;
    `n_steps` list[int]: the steps kept after truncation (0: the trace did not fit and its row is a
    blank placeholder; see the module docstring);
    `step_labels` FloatTensor [batch, max_steps], -100 padded, when every trace has `labels`
    (bools, or floats such as MC scores for soft targets), cut to the kept steps.
    Training and scoring both call this function, so their inputs agree token for token.
    """
    fmt = get_step_format(fmt)
    if not traces:
        raise MPRMError("encode_traces: no traces to encode")
    checked, texts, batch, positions, kept, (marker_id, header, positive) = _plan(
        processor, fmt, traces, max_length
    )
    if any(n_keep < len(steps) for n_keep, (_, steps, _) in zip(kept, checked, strict=True)):
        # Traces that keep no step become a blank placeholder row: no images, no question, no steps.
        texts = [
            _render(processor, fmt, prompt, steps[:n_keep], len(images))
            if n_keep
            else _render(processor, fmt, "", [], 0)
            for n_keep, (prompt, steps, images) in zip(kept, checked, strict=True)
        ]
        images = [
            trace_images if n_keep else [] for n_keep, (_, _, trace_images) in zip(kept, checked, strict=True)
        ]
        batch = _tokenize(processor, texts, images)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        for index in range(len(checked)):
            ids = batch["input_ids"][index, : lengths[index]].tolist()
            positions[index] = _score_positions(ids, fmt, marker_id, header, positive)
            if len(positions[index]) != kept[index] or (kept[index] and lengths[index] > max_length):
                raise RuntimeError(
                    f"truncation rule broken for trace {index}: {positions[index]}, {lengths[index]}"
                )
    max_steps = max(kept)
    step_positions = torch.full((len(checked), max_steps), -1, dtype=torch.long)
    for index, found in enumerate(positions):
        step_positions[index, : len(found)] = torch.tensor(found, dtype=torch.long)
    encoded = dict(batch)
    encoded["step_positions"] = step_positions
    encoded["n_steps"] = kept
    if all("labels" in trace for trace in traces):
        step_labels = torch.full((len(checked), max_steps), -100.0, dtype=torch.float32)
        for index, (trace, n_keep) in enumerate(zip(traces, kept, strict=True)):
            labels = _numeric_labels(trace["labels"], index)
            if len(labels) != len(checked[index][1]):
                raise MPRMError(
                    f"trace {index}: {len(labels)} labels for {len(checked[index][1])} steps (field 'labels')"
                )
            step_labels[index, :n_keep] = torch.tensor(labels[:n_keep], dtype=torch.float32)
        encoded["step_labels"] = step_labels
    return encoded


def _numeric_labels(labels: Any, index: int) -> list[float]:
    if not isinstance(labels, (list, tuple)):
        raise MPRMError(f"trace {index}: field 'labels' is not a list ({type(labels).__name__})")
    values = []
    for label_index, label in enumerate(labels):
        if isinstance(label, str) or label is None:
            raise MPRMError(f"trace {index}: field 'labels[{label_index}]' is not a number ({label!r})")
        values.append(float(label))
    return values


def step_reward_logits(
    logits: torch.Tensor, step_positions: torch.Tensor, reward_ids: tuple[int, int]
) -> torch.Tensor:
    """The two reward-token logits at each step position: [batch, max_steps, 2] (positive, negative).

    Padded steps (position -1) give zeros; mask them with `step_positions >= 0`.
    """
    valid = step_positions >= 0
    rows = torch.arange(logits.shape[0], device=logits.device).unsqueeze(1).expand_as(step_positions)
    picked = logits[rows, step_positions.clamp(min=0).to(logits.device)]
    pair = picked[..., list(reward_ids)]
    return pair * valid.to(pair.device).unsqueeze(-1).to(pair.dtype)


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys of an `encode_traces` batch that the model's forward takes."""
    return {
        key: value for key, value in batch.items() if key not in {"step_positions", "n_steps", "step_labels"}
    }


def forward_step_reward_logits(
    model: Any, batch: dict[str, Any], reward_ids: tuple[int, int]
) -> torch.Tensor:
    """Run the model on an `encode_traces` batch and return `step_reward_logits` [batch, max_steps, 2].

    Only the rows at step positions go through the LM head (`logits_to_keep`), which keeps a 150k-token
    vocabulary from materialising [batch, length, vocab] logits.
    """
    step_positions = batch["step_positions"]
    keep = torch.unique(step_positions[step_positions >= 0])
    parameter = next(model.parameters())
    device = parameter.device
    inputs = {
        # pixel values follow the model's dtype (a bfloat16 model gets bfloat16 images)
        key: value.to(device, parameter.dtype if value.is_floating_point() else value.dtype)
        if torch.is_tensor(value)
        else value
        for key, value in model_inputs(batch).items()
    }
    logits = model(**inputs, logits_to_keep=keep.to(device)).logits
    remapped = torch.where(step_positions >= 0, torch.searchsorted(keep, step_positions.clamp(min=0)), -1)
    return step_reward_logits(logits, remapped.to(logits.device), reward_ids)
