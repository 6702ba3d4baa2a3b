"""The Gradio Space: the reward a process reward model gives every step of a reasoning trace about an image.

One app serves both `mprm-hf demo` on a laptop and the Hugging Face Space in `spaces_demo/`. The model
comes from `--model`, else `$MPRM_MODEL` (a folder or a Hub id), else the PRM that `make demo` trains
(BIS-10%'s, under `outputs/quickstart`), else the tiny base model that ships with the package (pretrained,
never trained as a PRM), so that the demo always starts, even without a trained checkpoint. `--model2` (`$MPRM_MODEL2`) adds a
second PRM, scored side by side with the first.

The page marks every step likely correct or likely wrong at a threshold (the model card's calibrated
`prm_threshold`, else 0.5), marks the first step under it, and shows the trace's aggregate score. Bad
input (a file that is not an image, too many pixels, malformed trace JSON, a trace longer than the
model reads) is told in the page in one line, never as a bare error badge.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mprm_hf.embedded import TINY_BASE, default_model
from mprm_hf.errors import MPRMError
from mprm_hf.rerank import AGGREGATES, aggregate_rewards

logger = logging.getLogger(__name__)
EXAMPLES_DIR = Path("embedded") / "demo-examples"
STEP_FORMATS = ("prm-token", "visualprm")
N_EXAMPLES = 4
SPACE_DIR = Path(__file__).resolve().parent.parent / "spaces_demo"
REAL_EXAMPLES = SPACE_DIR / "examples" / "VisualProcessBench"  # real benchmark records, text only
THRESHOLD = 0.5  # the VisualProcessBench metric's default: a step is predicted correct iff reward >= 0.5
THRESHOLD_KEY = "prm_threshold"  # a calibrated threshold: model card front matter, else config.json
MAX_FILE_SIZE_MB = 20  # per upload; Gradio refuses larger files before they reach the app
MAX_FILE_SIZE = f"{MAX_FILE_SIZE_MB}mb"
DELETE_CACHE = (600, 3600)  # every 10 minutes remove uploads older than an hour; all of them at shutdown
LIKELY_CORRECT, LIKELY_WRONG = "likely correct", "likely wrong"
COLORS = {LIKELY_CORRECT: "#16a34a", LIKELY_WRONG: "#dc2626"}
HUMAN_LABELS = {1: "correct", 0: "neutral", -1: "incorrect"}  # VisualProcessBench's step labels
LABEL_WORDS = {"1": 1, "+": 1, "correct": 1, "0": 0, "neutral": 0, "-1": -1, "-": -1, "incorrect": -1}
AGGREGATE_RULES = {
    "mean": "the mean of the step rewards",
    "min": "the lowest step reward",
    "last": "the last step's reward",
    "product": "the product of the step rewards",
}
CSS = """
/* A refused upload (too large) is told by Gradio's own notice, which names the file and the limit; the
   upload boxes' bare "Error" badge beside it says nothing more. */
#images span.error, #trace-file span.error { display: none; }
.prm-table { width: 100%; border-collapse: collapse; table-layout: auto; font-size: 0.95em; }
.prm-table th, .prm-table td { padding: 6px 8px; border-bottom: 1px solid #e5e7eb; vertical-align: top;
  text-align: left; }
.prm-table th { white-space: nowrap; font-weight: 600; width: 1%; }
.prm-table th:last-child { width: auto; }
.prm-scroll { overflow-x: auto; }
.prm-table td { width: 1%; }
.prm-table .prm-num { white-space: nowrap; font-variant-numeric: tabular-nums; }
.prm-table td.prm-reward { min-width: 8.5em; }
.prm-table td.prm-text { width: auto; min-width: 12em; white-space: pre-wrap; word-break: normal;
  overflow-wrap: break-word; hyphens: none; }
.prm-table tr.prm-correct td:first-child { border-left: 5px solid #16a34a; }
.prm-table tr.prm-wrong td:first-child { border-left: 5px solid #dc2626; }
.prm-table tr.prm-wrong { background: #fef2f2; }
.prm-table tr.prm-unscored { color: #6b7280; }
.prm-badge { display: inline-block; padding: 1px 7px; border-radius: 9px; color: white; white-space: nowrap;
  font-size: 0.85em; }
.prm-badge.prm-correct { background: #16a34a; }
.prm-badge.prm-wrong { background: #dc2626; }
.prm-first-mark { display: block; margin-top: 3px; font-weight: 600; color: #b91c1c; }
.prm-summary { display: flex; flex-wrap: wrap; gap: 8px 24px; font-size: 1.05em; }
.prm-summary b { font-variant-numeric: tabular-nums; }
#banner { background: #fef3c7; border: 1px solid #f59e0b; border-radius: 6px; padding: 4px 12px; }
#message:not(:empty) { border-left: 4px solid #f59e0b; padding-left: 10px; }
"""


def resolve_model_path(model: str | os.PathLike[str] | None = None) -> str:
    """`model`, else `$MPRM_MODEL`, else `mprm_hf.embedded.default_model()` (`make demo`'s trained PRM,
    else the shipped tiny base)."""
    return str(model or os.environ.get("MPRM_MODEL") or default_model())


def _threshold_value(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise MPRMError(f"{where}: {THRESHOLD_KEY} must be a number between 0 and 1, got {value!r}")
    return float(value)


def calibrated_threshold(model_path: str | os.PathLike[str]) -> float | None:
    """The model's calibrated threshold: `prm_threshold` in its card's YAML front matter, else in its
    config.json; None when neither has one (or, for a Hub id, when the Hub cannot be reached)."""
    from huggingface_hub import ModelCard, hf_hub_download

    folder = Path(model_path).expanduser()
    local = folder.is_dir()
    try:
        card = folder / "README.md" if local else str(model_path)
        if not local or Path(card).is_file():
            found = _threshold_value(ModelCard.load(card).data.to_dict().get(THRESHOLD_KEY), f"{card}")
            if found is not None:
                return found
        config = folder / "config.json" if local else Path(hf_hub_download(str(model_path), "config.json"))
        if config.is_file():
            data = json.loads(config.read_text(encoding="utf-8"))
            return _threshold_value(data.get(THRESHOLD_KEY) if isinstance(data, dict) else None, str(config))
    except MPRMError:
        raise
    except Exception:  # noqa: BLE001 - offline, no card, no such repo: the default threshold stands
        return None
    return None


def model_warning(model: Any, model_path: str) -> str | None:
    """Why a page served by this model must not be read as a judgement, or None for a trained PRM."""
    from mprm_hf.step_format import CONFIG_KEY

    if Path(model_path).expanduser().resolve() == TINY_BASE.resolve():
        return (
            f"`{model_path}` is the tiny base model mprm-hf ships. It answers questions about pictures but "
            "was never trained as a PRM: its rewards show how the page works, not what a trained PRM thinks."
        )
    if getattr(getattr(model, "config", None), CONFIG_KEY, None) is None:
        return (
            f"`{model_path}` was never trained as a PRM (its config records no `{CONFIG_KEY}`): its "
            "rewards are those of an untrained network, not a judgement."
        )
    return None


@dataclass
class Prm:
    """One loaded PRM and what the page says about it."""

    name: str
    model: Any
    processor: Any
    threshold: float | None = None
    warning: str | None = None


@dataclass
class Scored:
    """One scored trace: what the views are drawn from when the threshold or the rule changes."""

    steps: list[str]
    rewards: list[list[float]]  # one list per PRM, possibly shorter than `steps` (cut at the context)
    labels: list[int] | None = None
    notices: list[str] = field(default_factory=list)


def verdict(reward: float, threshold: float = THRESHOLD) -> str:
    """The two classes the benchmark metric predicts: correct iff reward >= threshold."""
    return LIKELY_CORRECT if reward >= threshold else LIKELY_WRONG


def first_error(rewards: Sequence[float], threshold: float) -> int | None:
    """The 1-based number of the first step under the threshold: where a PRM says the trace goes wrong."""
    return next((number for number, reward in enumerate(rewards, start=1) if reward < threshold), None)


def parse_labels(text: str) -> list[int]:
    """Human step labels typed as `1 1 -1 0` (or `+ + - 0`, or words): VisualProcessBench's values."""
    labels = []
    for word in re.split(r"[\s,;]+", (text or "").strip().lower()):
        if not word:
            continue
        if word not in LABEL_WORDS:
            raise MPRMError(
                f"human label {word!r} is not one of 1 (correct), 0 (neutral), -1 (incorrect), or + / -"
            )
        labels.append(LABEL_WORDS[word])
    return labels


def format_labels(labels: Sequence[int]) -> str:
    return " ".join(str(label) for label in labels)


def agreement(rewards: Sequence[float], labels: Sequence[int], threshold: float) -> tuple[int, int]:
    """(agreeing, labelled) over the scored steps with a non-neutral human label, as the metric counts."""
    pairs = [(reward, label) for reward, label in zip(rewards, labels, strict=False) if label != 0]
    return sum((reward >= threshold) == (label == 1) for reward, label in pairs), len(pairs)


def _example_image(folder: Path) -> str:
    """A plain placeholder image for the text-only benchmark records, written once."""
    from PIL import Image

    from mprm_hf.fileio import atomic_output

    path = folder / "placeholder.png"
    if not path.is_file():
        with atomic_output(path) as temporary:
            Image.new("RGB", (224, 224), "white").save(temporary, format="PNG")
    return str(path)


def synthetic_examples(folder: Path = EXAMPLES_DIR, n_examples: int = N_EXAMPLES) -> list[list[Any]]:
    """A few benchmark traces of the synthetic world ([images], question, steps, human labels), written on
    first use."""
    from mprm_hf.data.synthetic import write_synthetic
    from mprm_hf.data.visualprocessbench import load_visualprocessbench

    folder = Path(folder)
    benchmark = folder / "VisualProcessBench"
    if not (benchmark / "test.jsonl").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        write_synthetic(staging, rollouts=0, benchmark_traces=n_examples, seed=0, images=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    traces, _ = load_visualprocessbench(benchmark)
    return [
        [list(row["images"]), row["question"], "\n\n".join(row["steps"]), format_labels(row["labels"])]
        for row in traces.select(range(min(n_examples, len(traces))))
    ]


def real_examples(folder: Path = EXAMPLES_DIR, benchmark: Path = REAL_EXAMPLES) -> list[list[Any]]:
    """Real VisualProcessBench records (published without their images): their text, their human labels,
    and a placeholder image."""
    from mprm_hf.data.visualprocessbench import load_visualprocessbench

    placeholder = _example_image(Path(folder))
    traces, _ = load_visualprocessbench(benchmark)
    return [
        [[placeholder], row["question"], "\n\n".join(row["steps"]), format_labels(row["labels"])]
        for row in traces
    ]


@dataclass
class Trace:
    """A trace read from an uploaded JSON file."""

    question: str
    steps: list[str]
    labels: list[int]
    images: list[str]  # the names the record gives; the page never opens a server path
    note: str


def _json_lines(text: str, name: str) -> list[str]:
    """The records of an uploaded file as JSON lines: one object, an array of objects, or jsonl."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise MPRMError(f"{name}: not valid JSON (line {error.lineno}: {error.msg})") from None
        return lines  # jsonl: the loader parses and locates every line
    records = value if isinstance(value, list) else [value]
    if not records or not all(isinstance(record, dict) for record in records):
        raise MPRMError(f"{name}: expected a JSON object (or a list of them) holding one trace")
    return [json.dumps(record, ensure_ascii=False) for record in records]


def read_trace(path: str | os.PathLike[str], name: str | None = None) -> Trace:
    """The first trace of an uploaded VisualProcessBench record (`response.steps`) or stepwise record
    (`prompt` / `completions` / `labels`), checked by the project's own loaders."""
    from mprm_hf.data.stepwise import load_stepwise
    from mprm_hf.data.visualprocessbench import load_visualprocessbench

    name = name or Path(path).name
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MPRMError(f"{name}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    lines = _json_lines(text, name)
    with tempfile.TemporaryDirectory(prefix="mprm-trace-") as scratch:
        jsonl = Path(scratch) / "test.jsonl"
        jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            if '"response"' in lines[0]:
                rows, _ = load_visualprocessbench(scratch)
                row = rows[0]
                question, steps, labels = row["question"], row["steps"], list(row["labels"])
                images = [Path(image).name for image in row["images"]]
                kind, count = "VisualProcessBench", len(rows)
            else:
                rows = load_stepwise(jsonl)
                row = rows[0]
                question, steps = row["prompt"], row["completions"]
                labels = [1 if label else -1 for label in row["labels"]]
                images = [Path(image).name for image in row["images"]]
                kind, count = "stepwise", len(rows)
        except MPRMError as error:
            shown = str(error).replace(str(jsonl), name).replace(scratch, name).replace(jsonl.name, name)
            raise MPRMError(shown) from None
    note = f"Read a {kind} trace from `{name}`" + (f" (the first of {count} records)." if count > 1 else ".")
    if images:
        note += f" It names {len(images)} image(s) ({', '.join(images)}): upload them under Images."
    return Trace(question.strip(), [step.strip() for step in steps], labels, images, note)


def processor_max_pixels(processor: Any) -> int | None:
    """The most pixels the processor feeds the model (Qwen2-VL's `max_pixels`, its size's longest edge)."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return None
    value = getattr(image_processor, "max_pixels", None)
    size = getattr(image_processor, "size", None)
    if value is None and size is not None:
        get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
        value = get("max_pixels") or (
            "qwen2" in type(image_processor).__name__.lower() and get("longest_edge")
        )
    return int(value) if value else None


def load_upload(path: str, max_pixels: int | None) -> tuple[Any, str | None]:
    """An uploaded image, bounded by `step_format`'s rules and downscaled to the processor's maximum, with a
    notice saying so; a file that is not an image is an MPRMError naming the upload, not the server path."""
    from PIL import Image

    from mprm_hf.step_format import MAX_IMAGE_PIXELS, load_image

    name = Path(path).name
    try:
        with Image.open(path) as opened:
            original = opened.size
    except (OSError, ValueError, Image.DecompressionBombError):
        raise MPRMError(f"`{name}` is not an image (PNG, JPEG, WebP, ...): nothing was scored") from None
    if original[0] * original[1] > MAX_IMAGE_PIXELS:  # refused before decoding, as step_format does
        raise MPRMError(
            f"`{name}` is {original[0]} x {original[1]} pixels, over the limit of {MAX_IMAGE_PIXELS:,}: "
            "downscale it first"
        )
    try:
        image = load_image(path, "upload")
    except MPRMError:
        raise MPRMError(f"`{name}` cannot be decoded as an image: nothing was scored") from None
    if max_pixels is None or image.width * image.height <= max_pixels:
        if image.size == original:
            return image, None
        return (
            image,
            f"`{name}` ({original[0]} x {original[1]}) was downscaled to {image.width} x {image.height}.",
        )
    scale = math.sqrt(max_pixels / (image.width * image.height))
    image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.LANCZOS)
    return image, (
        f"`{name}` ({original[0]} x {original[1]} pixels) was downscaled to {image.width} x {image.height}, "
        f"the model's processor maximum of {max_pixels:,} pixels."
    )


def reward_table(scored: Scored, names: Sequence[str], threshold: float) -> str:
    """Every step as a row: per PRM its reward, verdict and colour (and the first-error mark), then the
    human label and the text, which takes the rest of the width."""
    two = len(scored.rewards) > 1
    heads = ["Step"] + [f"Reward {name}" if two else "Reward" for name in names]
    heads += ["Human label"] if scored.labels is not None else []
    firsts = [first_error(rewards, threshold) for rewards in scored.rewards]
    rows = []
    for number, step in enumerate(scored.steps, start=1):
        cells = [f'<td class="prm-num">{number}</td>']
        attributes = []
        row_class = "prm-unscored"
        for index, rewards in enumerate(scored.rewards):
            if number > len(rewards):
                cells.append('<td class="prm-reward">not scored</td>')
                continue
            reward = rewards[number - 1]
            kind = "prm-correct" if reward >= threshold else "prm-wrong"
            row_class = kind if index == 0 else row_class
            attributes.append(f'data-reward{"" if index == 0 else index + 1}="{reward!r}"')
            mark = '<span class="prm-first-mark">first likely error</span>' if firsts[index] == number else ""
            cells.append(
                f'<td class="prm-reward"><span class="prm-num">{reward:.4f}</span> '
                f'<span class="prm-badge {kind}">{verdict(reward, threshold)}</span>{mark}</td>'
            )
        if scored.labels is not None:
            cells.append(f'<td class="prm-label">{HUMAN_LABELS[scored.labels[number - 1]]}</td>')
        cells.append(f'<td class="prm-text">{html.escape(step)}</td>')
        rows.append(
            f'<tr id="step-{number}" class="prm-row {row_class}" {" ".join(attributes)}>{"".join(cells)}</tr>'
        )
    head = "".join(f"<th>{html.escape(text)}</th>" for text in [*heads, "Text"])
    table = f'<table class="prm-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f'<div class="prm-scroll">{table}</div>'


def summary(scored: Scored, names: Sequence[str], threshold: float, how: str) -> str:
    """The trace's aggregate score under the chosen rule, its likely first error, and the human agreement."""
    items = []
    for index, (name, rewards) in enumerate(zip(names, scored.rewards, strict=True)):
        suffix = "" if index == 0 else str(index + 1)
        who = f" ({html.escape(name)})" if len(names) > 1 else ""
        partial = "" if len(rewards) == len(scored.steps) else f", over the {len(rewards)} scored steps"
        score = aggregate_rewards(rewards, how)
        items.append(
            f'<span id="aggregate{suffix}" data-value="{score!r}" data-rule="{how}">Trace score{who}: '
            f"<b>{score:.4f}</b> ({AGGREGATE_RULES[how]}{partial})</span>"
        )
        first = first_error(rewards, threshold)
        text = (
            f"likely first error{who}: <b>step {first}</b> (reward {rewards[first - 1]:.4f} &lt; {threshold:.2f})"
            if first
            else f"no step under {threshold:.2f}{who}"
        )
        items.append(
            f'<span id="first-error{suffix}" data-step="{first or ""}">{text[0].upper()}{text[1:]}</span>'
        )
    if scored.labels is not None:
        for index, (name, rewards) in enumerate(zip(names, scored.rewards, strict=True)):
            suffix = "" if index == 0 else str(index + 1)
            agree, labelled = agreement(rewards, scored.labels, threshold)
            who = f" {html.escape(name)}" if len(names) > 1 else " the model"
            items.append(
                f'<span id="agreement{suffix}" data-agree="{agree}" data-labelled="{labelled}">Human labels and'
                f"{who}: <b>{agree} of {labelled}</b> non-neutral steps agree</span>"
            )
    if len(scored.rewards) > 1:
        first, second = scored.rewards[:2]
        differ = [
            n
            for n, (a, b) in enumerate(zip(first, second, strict=False), start=1)
            if (a >= threshold) != (b >= threshold)
        ]
        listed = ", ".join(map(str, differ)) if differ else "none"
        items.append(
            f'<span id="disagreement" data-steps="{",".join(map(str, differ))}">The two PRMs disagree on steps: '
            f"<b>{listed}</b></span>"
        )
    return f'<div class="prm-summary">{"".join(items)}</div>'


def bars(rewards: Sequence[float], threshold: float) -> Any:
    """The data of a bar plot: one bar per scored step, coloured by verdict."""
    import pandas as pd

    numbers = [str(number) for number in range(1, len(rewards) + 1)]
    return pd.DataFrame(
        {"step": numbers, "reward": list(rewards), "verdict": [verdict(r, threshold) for r in rewards]}
    )


def score_trace(
    prms: Sequence[Prm], images: Sequence[Any], question: str, steps: list[str], fmt: str
) -> Scored:
    """Every PRM's rewards for one trace, with a notice when a trace longer than a model reads was cut."""
    from mprm_hf.scoring import context_length, score_steps

    scored = Scored(steps=steps, rewards=[])
    for prm in prms:
        rewards = score_steps(prm.model, prm.processor, list(images), question, steps, step_format=fmt)
        if not rewards:
            raise MPRMError(
                f"not even step 1 fits in the {context_length(prm.model) or '?'} tokens {prm.name} reads: "
                "shorten the question or the first step"
            )
        if len(rewards) < len(steps):
            scored.notices.append(
                f"The trace is longer than {prm.name} reads ({context_length(prm.model):,} tokens): steps "
                f"1-{len(rewards)} of {len(steps)} were scored; steps {len(rewards) + 1}-{len(steps)} have "
                "no reward."
            )
        scored.rewards.append(rewards)
    return scored


def build_app(
    prms: Sequence[Prm], *, examples: Sequence[Sequence[Any]] = (), real: Sequence[Sequence[Any]] = ()
) -> Any:
    """The `gr.Blocks` UI around one or two loaded PRMs: the form on the left, the rewards on the right."""
    import gradio as gr

    from mprm_hf.step_format import split_steps

    if not 1 <= len(prms) <= 2:
        raise MPRMError(f"the page shows one PRM or two side by side, not {len(prms)}")
    first, second = prms[0], (prms[1] if len(prms) > 1 else None)
    names = ["A", "B"] if second else [first.name]
    max_pixels = processor_max_pixels(first.processor)
    default_threshold = first.threshold if first.threshold is not None else THRESHOLD
    default_format = getattr(first.model.config, "prm_step_format", None) or STEP_FORMATS[0]

    # Every forward pass runs on one thread: Gradio hands requests to a pool of worker threads, and each
    # thread that allocates tensors grows its own malloc arena, so the server's memory kept creeping up.
    scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mprm-scorer")

    def views(scored: Scored | None, cut: float, how: str) -> tuple[str, str, Any, Any]:
        if scored is None:
            return "", "", None, None
        plots = [
            gr.BarPlot(value=bars(rewards, cut), sort=[str(n) for n in range(1, len(rewards) + 1)])
            for rewards in scored.rewards
        ]  # step order, not "1, 10, 2"
        return (
            summary(scored, names, cut, how),
            reward_table(scored, names, cut),
            plots[0],
            plots[1] if len(plots) > 1 else None,
        )

    def score(
        files: list[str] | None,
        question: str,
        steps_text: str,
        labels_text: str,
        step_format: str,
        cut: float,
        how: str,
    ) -> tuple[Any, ...]:
        try:
            steps = split_steps(steps_text or "")
            if not steps:
                raise MPRMError("No steps: paste at least one step (separate steps with a blank line).")
            if not (question or "").strip():
                raise MPRMError("No question: type the question the steps answer.")
            labels = parse_labels(labels_text) or None
            notices = []
            if labels is not None and len(labels) != len(steps):
                notices.append(
                    f"{len(labels)} human labels for {len(steps)} steps: the labels are not shown."
                )
                labels = None
            images = []
            for path in files or []:
                image, notice = load_upload(path, max_pixels)
                images.append(image)
                notices += [notice] if notice else []
            if not images:
                notices.insert(0, "No image: the steps were scored on the text alone.")
            scored = scorer.submit(score_trace, prms, images, question.strip(), steps, step_format).result()
        except MPRMError as error:
            gr.Warning(str(error))
            return (None, f"**Not scored.** {error}", "", "", None, None)
        except Exception as error:  # noqa: BLE001 - the page says it in one line; the log keeps the trace
            logger.exception("scoring failed")
            told = f"the server failed while scoring ({type(error).__name__}); its log has the details"
            gr.Warning(told)
            return (None, f"**Not scored.** {told[0].upper()}{told[1:]}.", "", "", None, None)
        scored.labels, scored.notices = labels, notices + scored.notices
        return (scored, "\n\n".join(scored.notices), *views(scored, cut, how))

    def load_trace(file: str | None) -> tuple[Any, ...]:
        if not file:
            return gr.update(), gr.update(), gr.update(), ""
        try:
            trace = read_trace(file)
        except MPRMError as error:
            gr.Warning(str(error))
            return gr.update(), gr.update(), gr.update(), f"**Trace not read.** {error}"
        return trace.question, "\n\n".join(trace.steps), format_labels(trace.labels), trace.note

    with gr.Blocks(title="mprm-hf: per-step rewards", delete_cache=DELETE_CACHE) as app:
        gr.HTML(f"<style>{CSS}</style>", padding=False)
        gr.Markdown(
            "# Per-step rewards of a multimodal process reward model\n"
            f"Model{'s' if second else ''}: "
            + (f"**A** `{first.name}`, **B** `{second.name}`" if second else f"`{first.name}`")
            + ". Give an image, a question and a step-by-step solution: every step gets the probability, "
            "according to the model, that it is correct; green steps are likely correct, red ones likely wrong "
            "at the threshold."
        )
        warnings = [prm.warning for prm in prms if prm.warning]
        if warnings:
            gr.Markdown("**Untrained model.** " + " ".join(warnings), elem_id="banner")
        state = gr.State(None, time_to_live=3600)
        with gr.Row():
            with gr.Column(scale=4):
                files = gr.File(
                    label="Images (one or several)",
                    file_count="multiple",
                    type="filepath",
                    elem_id="images",
                )
                gr.Markdown(
                    f"PNG, JPEG, WebP, ...: at most {MAX_FILE_SIZE_MB} MB per file. A trace can also be loaded "
                    "from a VisualProcessBench or stepwise JSON file below.",
                    elem_id="upload-limits",
                )
                trace_file = gr.File(
                    label="Or load a trace (JSON)",
                    file_count="single",
                    type="filepath",
                    elem_id="trace-file",
                )
                question = gr.Textbox(label="Question", lines=3, elem_id="question")
                steps = gr.Textbox(
                    label="Steps (a blank line between steps)", lines=10, elem_id="steps", max_lines=40
                )
                labels = gr.Textbox(
                    label="Human labels (optional)",
                    placeholder="one per step: 1 correct, 0 neutral, -1 incorrect (or + / -)",
                    elem_id="labels",
                )
                step_format = gr.Radio(
                    list(STEP_FORMATS),
                    value=default_format,
                    label="Step format (the one the model was trained with)",
                    elem_id="step-format",
                )
                with gr.Group():
                    threshold_slider = gr.Slider(
                        0.0,
                        1.0,
                        value=default_threshold,
                        step=0.01,
                        label="Threshold"
                        + (" (the model's calibrated one)" if first.threshold is not None else ""),
                        elem_id="threshold",
                    )
                    aggregate = gr.Radio(
                        list(AGGREGATES), value="mean", label="Trace score rule", elem_id="aggregate-rule"
                    )
                score_button = gr.Button("Score", variant="primary", elem_id="score")
            with gr.Column(scale=6):
                message = gr.Markdown(elem_id="message")
                summary_view = gr.HTML(elem_id="summary")
                table = gr.HTML(elem_id="rewards")
                plot = gr.BarPlot(
                    x="step",
                    y="reward",
                    color="verdict",
                    color_map=COLORS,
                    y_lim=[0, 1],
                    label="Reward per step" + (" (A)" if second else ""),
                    elem_id="bars",
                )
                plot2 = gr.BarPlot(
                    x="step",
                    y="reward",
                    color="verdict",
                    color_map=COLORS,
                    y_lim=[0, 1],
                    label="Reward per step (B)",
                    elem_id="bars2",
                    visible=second is not None,
                )
        inputs = [files, question, steps, labels]
        if examples:
            gr.Examples(
                examples=[list(e) for e in examples], inputs=inputs, label="Synthetic world, with labels"
            )
        if real:
            gr.Examples(
                examples=[list(e) for e in real],
                inputs=inputs,
                label="Real VisualProcessBench records (text only, a blank placeholder image), with labels",
            )
        outputs = [summary_view, table, plot, plot2]
        score_button.click(
            score,
            inputs=[files, question, steps, labels, step_format, threshold_slider, aggregate],
            outputs=[state, message, *outputs],
            api_name="score",
        )
        for control in (threshold_slider, aggregate):
            control.change(
                views, inputs=[state, threshold_slider, aggregate], outputs=outputs, api_name=False
            )
        trace_file.upload(
            load_trace, inputs=[trace_file], outputs=[question, steps, labels, message], api_name=False
        )
    return app


def load_prm(model: str | os.PathLike[str]) -> Prm:
    """A PRM with its calibrated threshold and its untrained-model warning."""
    from mprm_hf.modeling import load_model_and_processor

    path = str(model)
    loaded, processor = load_model_and_processor(path)
    return Prm(path, loaded, processor, calibrated_threshold(path), model_warning(loaded, path))


def private_upload_folder() -> Path:
    """A folder of this process's own for Gradio's uploads and cache (under `$GRADIO_TEMP_DIR` when set),
    removed when the process exits: Gradio's shared folder keeps leftovers of every upload (example copies,
    empty multipart scratch files) past shutdown. Set before the app is built, since Gradio reads it then."""
    import atexit

    current = os.environ.get("GRADIO_TEMP_DIR")
    if current and Path(current).name.startswith(f"mprm-demo-{os.getpid()}-"):
        return Path(current)
    if current:
        Path(current).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"mprm-demo-{os.getpid()}-", dir=current or None))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def create_app(
    model: str | os.PathLike[str] | None = None,
    model2: str | os.PathLike[str] | None = None,
    *,
    examples_dir: Path = EXAMPLES_DIR,
) -> Any:
    """Load the model (see `resolve_model_path`), the optional second one (`model2`, else `$MPRM_MODEL2`)
    and the examples, and build the app."""
    private_upload_folder()
    chosen = model2 or os.environ.get("MPRM_MODEL2")
    prms = [load_prm(resolve_model_path(model))] + ([load_prm(chosen)] if chosen else [])
    return build_app(prms, examples=synthetic_examples(examples_dir), real=real_examples(examples_dir))


def launch(app: Any, **options: Any) -> Any:
    """`app.launch` with the upload size limit set (the Space's app.py launches through here too). A
    SIGTERM (a Space or a container stopping) exits like Ctrl-C, so the uploads folder is removed."""
    import signal
    import threading

    options.setdefault("max_file_size", MAX_FILE_SIZE)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # raises KeyboardInterrupt
    return app.launch(**options)


def stage_space(destination: str | os.PathLike[str]) -> Path:
    """A folder ready to push as a Space (`mprm-hf push DIR --repo-type space`): `spaces_demo/` plus the
    `mprm_hf` package that app.py imports, written all at once by `hub.stage_folder`."""
    from huggingface_hub import RepoCard

    from mprm_hf.hub import stage_folder

    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "README.md")

    def copy_app_and_package(folder: Path) -> None:
        shutil.copytree(SPACE_DIR, folder, dirs_exist_ok=True, ignore=skip)
        shutil.copytree(Path(__file__).resolve().parent, folder / "mprm_hf", ignore=skip)

    return stage_folder(destination, RepoCard.load(SPACE_DIR / "README.md"), write=copy_app_and_package)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mprm-hf demo",
        description="Serve the Gradio app that shows the reward of every step of a trace.",
    )
    parser.add_argument(
        "--model",
        help="model folder or Hub id (default: $MPRM_MODEL, else make demo's BIS-10%% PRM, else the shipped "
        "tiny base)",
    )
    parser.add_argument("--model2", help="a second PRM scored side by side (default: $MPRM_MODEL2)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve a network)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument(
        "--stage-space", type=Path, metavar="DIR", help="write a Space folder (app + package) to DIR and exit"
    )
    args = parser.parse_args(argv)
    if args.stage_space is not None:
        print(
            f"staged the Space in {stage_space(args.stage_space)}; push it with `mprm-hf push` --repo-type space"
        )
        return 0
    launch(
        create_app(args.model, args.model2), server_name=args.host, server_port=args.port, share=args.share
    )
    return 0
