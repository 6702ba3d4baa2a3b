"""The synthetic world: VisualPRM400K-v1.1-Raw and VisualProcessBench look-alikes a tiny model can learn.

Every image is a 56x56 picture of a 2x2 grid of cells; a cell is empty or holds one coloured shape.
Every reasoning step makes one claim about the picture (a cell's colour or shape, whether it is empty,
a count, where a shape is) that is true or false, padded with neutral filler words to the length of
the real source's steps; the final step states an answer. Monte Carlo (MC) scores are simulated from
the truth with the label noise that MC estimation produces in the real data (see `NoiseModel`), and
the benchmark's labels are the truth itself, so a PRM trained on the noisy corpus is measured against
clean labels, as in the real setting. Files are written in the real layouts so every loader, selector
and trainer runs on them unchanged. See docs/synthetic.md.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import random
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from mprm_hf.data.synthetic_sources import FULL_SIZE_ROLLOUTS, SOURCE_SHAPES
from mprm_hf.errors import MPRMError, first_line
from mprm_hf.fileio import write_bytes_atomic

# ---------------------------------------------------------------------------------------------------
# The world: scenes, pictures, claims
# ---------------------------------------------------------------------------------------------------

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
# Each cell has a pale tint of its own, like the labelled quadrants of a diagram: a cell's position can be
# read from its own picture, so a claim about "the top left cell" binds to what the model sees there.
CELL_TINTS = ((250, 226, 226), (226, 246, 226), (226, 232, 252), (248, 242, 214))
IMAGE_SIZE = 56  # 2x2 cells of 28 px: one merged 28x28 vision token per cell for Qwen2-VL
CELL_SIZE = 28
SHAPE_MARGIN = 5
MC_TOTAL = 16
EMPTY = 0
CHOICE_LETTERS = ("A", "B", "C", "D")
NUMBER_WORDS = ("no", "one", "two", "three", "four")

T = TypeVar("T")

# A scene is a tuple of 4 cell codes (POSITIONS order): 0 = empty, else 1 + shape * 4 + colour.
Scene = tuple[int, int, int, int]


def cell_code(shape: int, colour: int) -> int:
    return 1 + shape * len(COLOUR_NAMES) + colour


def cell_shape(code: int) -> int:
    return (code - 1) // len(COLOUR_NAMES)


def cell_colour(code: int) -> int:
    return (code - 1) % len(COLOUR_NAMES)


def cell_box(position: int) -> tuple[int, int]:
    """Top-left pixel of a cell: cells are numbered row by row."""
    return (position % 2) * CELL_SIZE, (position // 2) * CELL_SIZE


def draw_scene(scene: Scene) -> Image.Image:
    """Draw a scene without anti-aliasing, so every pixel of a shape has exactly its colour."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    draw = ImageDraw.Draw(image)
    low, high = SHAPE_MARGIN, CELL_SIZE - SHAPE_MARGIN - 1
    for position, code in enumerate(scene):
        x, y = cell_box(position)
        draw.rectangle((x, y, x + CELL_SIZE - 1, y + CELL_SIZE - 1), fill=CELL_TINTS[position])
        if code == EMPTY:
            continue
        fill = COLOURS[COLOUR_NAMES[cell_colour(code)]]
        shape = SHAPES[cell_shape(code)]
        if shape == "circle":
            draw.ellipse((x + low, y + low, x + high, y + high), fill=fill)
        elif shape == "square":
            draw.rectangle((x + low, y + low, x + high, y + high), fill=fill)
        elif shape == "diamond":
            middle = CELL_SIZE // 2
            draw.polygon(
                [
                    (x + middle, y + low),
                    (x + high, y + middle),
                    (x + middle, y + high),
                    (x + low, y + middle),
                ],
                fill=fill,
            )
        else:
            draw.polygon(
                [(x + CELL_SIZE // 2, y + low), (x + low, y + high), (x + high, y + high)], fill=fill
            )
    return image


def save_png(image: Image.Image, path: Path) -> None:
    # Fixed encoder settings: the same scene always gives the same bytes.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    write_bytes_atomic(path, buffer.getvalue())


def _below(rng: random.Random, n: int) -> int:
    """A uniform integer in [0, n): `randrange` costs several times more, and this runs per step."""
    return int(rng.random() * n)


def _pick(rng: random.Random, items: Sequence[T]) -> T:
    return items[int(rng.random() * len(items))]


def random_scene(rng: random.Random) -> Scene:
    """Each cell empty with probability 0.3, at least one shape; each shape at most once, any colours."""
    while True:
        shapes = list(range(len(SHAPES)))
        rng.shuffle(shapes)
        cells = tuple(
            EMPTY if rng.random() < 0.3 else cell_code(shapes[p], _below(rng, len(COLOUR_NAMES)))
            for p in range(len(POSITIONS))
        )
        if any(cells):
            return cells  # type: ignore[return-value]


def _count(scene: Scene, *, colour: int | None = None, shape: int | None = None) -> int:
    return sum(
        1
        for code in scene
        if code != EMPTY
        and (colour is None or cell_colour(code) == colour)
        and (shape is None or cell_shape(code) == shape)
    )


def _other(rng: random.Random, choices: int, avoid: int) -> int:
    value = _below(rng, choices - 1)
    return value + 1 if value >= avoid else value


MAX_COUNT = len(POSITIONS)


def counted(count: int, noun: str) -> str:
    """'there is one red shape', 'there are no shapes': grammatical counts."""
    verb = "is" if count == 1 else "are"
    return f"there {verb} {NUMBER_WORDS[count]} {noun}{'' if count == 1 else 's'}"


# Claim templates, several phrasings each: {s} a shape (each shape is drawn at most once, so it names one
# cell), {c} a colour, {p} a position. Every claim finds a shape or colour in the picture by what it looks
# like and reads one thing off it: its colour, its cell, whether it is there, how many there are.
COLOUR_OF = ("the {s} is {c}", "the colour of the {s} is {c}", "the {s} is drawn in {c}")
PLACE_OF = ("the {s} is in the {p} cell", "the {s} sits in the {p} cell", "the {p} cell holds the {s}")
PRESENT = ("there is a {c} {s} in the image", "the image contains a {c} {s}")
ABSENT = ("there is no {c} {s} in the image", "the image has no {c} {s}")
SHAPE_PRESENT = ("the image shows a {s}", "a {s} is drawn in the grid")
SHAPE_ABSENT = ("the image shows no {s}", "no {s} is drawn in the grid")
CLAIM_KINDS = ("colour_of", "place_of", "exists", "shape_exists", "count_colour")


def _shapes(scene: Scene) -> dict[int, int]:
    """shape -> position of the cells that hold one."""
    return {cell_shape(code): position for position, code in enumerate(scene) if code != EMPTY}


def make_claim(scene: Scene, truth: bool, rng: random.Random) -> str:
    """One claim about `scene` as a lowercase clause, true or false as asked."""
    kind = _pick(rng, CLAIM_KINDS)
    drawn = _shapes(scene)
    if kind in {"colour_of", "place_of"}:
        shape = _pick(rng, sorted(drawn))
        position = drawn[shape]
        if kind == "colour_of":
            colour = cell_colour(scene[position])
            colour = colour if truth else _other(rng, len(COLOUR_NAMES), colour)
            return _pick(rng, COLOUR_OF).format(s=SHAPES[shape], c=COLOUR_NAMES[colour])
        position = position if truth else _other(rng, len(POSITIONS), position)
        return _pick(rng, PLACE_OF).format(s=SHAPES[shape], p=POSITIONS[position])
    if kind == "exists":
        code = cell_code(_below(rng, len(SHAPES)), _below(rng, len(COLOUR_NAMES)))
        if rng.random() < 0.5:  # half of them name a shape that is drawn, in its colour or another
            shape = _pick(rng, sorted(drawn))
            code = cell_code(
                shape, cell_colour(scene[drawn[shape]]) if rng.random() < 0.5 else cell_colour(code)
            )
        says_present = (code in scene) == truth
        return _pick(rng, PRESENT if says_present else ABSENT).format(
            c=COLOUR_NAMES[cell_colour(code)], s=SHAPES[cell_shape(code)]
        )
    if kind == "shape_exists":
        shape = _below(rng, len(SHAPES))
        says_present = (shape in drawn) == truth
        return _pick(rng, SHAPE_PRESENT if says_present else SHAPE_ABSENT).format(s=SHAPES[shape])
    colour = _below(rng, len(COLOUR_NAMES))
    count = _count(scene, colour=colour)
    stated = count if truth else _other(rng, MAX_COUNT + 1, count)
    return counted(stated, f"{COLOUR_NAMES[colour]} shape")


@dataclass(frozen=True)
class Question:
    """A question, its answer, the wrong answers a rollout may state, and the sentence that concludes each."""

    text: str
    answer: str
    wrong_answers: tuple[str, ...]
    conclusions: dict[str, str]  # stated answer -> the claim that leads to it (true only for the answer)


def _question(text: str, answer: str, conclusions: dict[str, str]) -> Question:
    return Question(text, answer, tuple(option for option in conclusions if option != answer), conclusions)


def make_question(kind: str, scenes: Sequence[Scene], rng: random.Random) -> Question:
    scene = scenes[0]
    drawn = _shapes(scene)
    if kind == "count_colour":
        colour = COLOUR_NAMES[_below(rng, len(COLOUR_NAMES))]
        count = _count(scene, colour=COLOUR_NAMES.index(colour))
        says = {str(k): counted(k, f"{colour} shape") for k in range(MAX_COUNT + 1)}
        return _question(f"How many {colour} shapes are there in the image?", str(count), says)
    if kind == "count_all":
        says = {str(k): f"{counted(k, 'shape')} in all" for k in range(MAX_COUNT + 1)}
        return _question("How many shapes are there in the image?", str(_count(scene)), says)
    shape = _pick(rng, sorted(drawn))
    name = SHAPES[shape]
    colour = COLOUR_NAMES[cell_colour(scene[drawn[shape]])]
    if kind == "colour_of":
        says = {c: f"the {name} is {c}" for c in COLOUR_NAMES}
        return _question(f"What colour is the {name}?", colour, says)
    if kind == "choice":
        options = list(COLOUR_NAMES)
        rng.shuffle(options)
        letter = CHOICE_LETTERS[options.index(colour)]
        listing = "\n".join(f"({L}) {option}" for L, option in zip(CHOICE_LETTERS, options, strict=True))
        says = {
            L: f"the {name} is {option}, which is option {L}"
            for L, option in zip(CHOICE_LETTERS, options, strict=True)
        }
        return _question(f"What colour is the {name}?\nChoices:\n{listing}", letter, says)
    if kind == "place_of":
        says = {p: f"the {name} is in the {p} cell" for p in POSITIONS}
        return _question(f"In which cell is the {name}?", POSITIONS[drawn[shape]], says)
    if kind == "exists":
        if rng.random() < 0.5:  # ask about a shape that is there
            code = scene[drawn[shape]]
        else:
            code = cell_code(_below(rng, len(SHAPES)), _below(rng, len(COLOUR_NAMES)))
        thing = f"{COLOUR_NAMES[cell_colour(code)]} {SHAPES[cell_shape(code)]}"
        says = {"yes": f"the image contains a {thing}", "no": f"there is no {thing} in the image"}
        return _question(f"Is there a {thing} in the image?", "yes" if code in scene else "no", says)
    if kind == "compare":
        says = {
            "yes": "the left image has more shapes than the right image",
            "no": "the left image does not have more shapes than the right image",
        }
        text = "Is it true that the left image has more shapes than the right image?"
        return _question(text, "yes" if _count(scenes[0]) > _count(scenes[1]) else "no", says)
    raise ValueError(f"unknown question kind {kind!r}")


SINGLE_IMAGE_QUESTIONS = ("count_colour", "count_all", "colour_of", "place_of", "exists", "choice")


def question_kinds(source: str) -> tuple[str, ...]:
    """The question kinds a source asks, loosely after what the real source asks (yes/no, counts, choices)."""
    if source.startswith("nlvr2"):
        return ("compare",)
    if "yorn" in source or "exist" in source:
        return ("exists",)
    if source.endswith("_int") or "int_only" in source or "clevr_math" in source.lower():
        return ("count_colour", "count_all")
    if any(key in source for key in ("multi_choice", "m3cot", "ai2d", "iconqa")):
        return ("choice",)
    return SINGLE_IMAGE_QUESTIONS


ROLLOUT_INSTRUCTION = (
    "Answer the question step by step, one step per paragraph, and end with: so the answer is ANSWER."
)
IMAGE_SIDES = ("left", "right")

BODY_LEADS = (
    "Looking at the image,",
    "Next,",
    "Then",
    "Also,",
    "Checking the picture,",
    "We can see that",
    "Now,",
    "Looking again,",
    "Besides,",
)
FINAL_LEADS = ("So", "Therefore,", "In the end,", "Putting it together,", "Hence")
NEUTRAL_STEPS = (
    "We read the question again and look at the whole image.",
    "Let us go through the picture cell by cell.",
    "We check each cell of the grid in turn.",
    "The grid has four cells, so we look at each of them.",
)


def _sentence(lead: str, clause: str) -> str:
    text = f"{lead} {clause}"
    return text[0].upper() + text[1:]


def body_step(claim: str, rng: random.Random) -> str:
    return _sentence(_pick(rng, BODY_LEADS), claim) + "."


def neutral_step(question: Question, rng: random.Random) -> str:
    if rng.random() < 0.4:
        return f"The question asks: {question.text.splitlines()[0]}"
    return _pick(rng, NEUTRAL_STEPS)


def final_step(question: Question, stated_answer: str, rng: random.Random) -> str:
    """The conclusion that leads to `stated_answer`: true exactly when the stated answer is right."""
    return _sentence(_pick(rng, FINAL_LEADS), question.conclusions[stated_answer]) + (
        f", so the answer is {stated_answer}."
    )


def step_claim(step: str) -> str | None:
    """The claim a step of the world makes, as a lowercase clause (the inverse of `body_step` and
    `final_step`), or None for a step that makes none (a restatement)."""
    text = step.strip()
    for lead in sorted(BODY_LEADS + FINAL_LEADS, key=len, reverse=True):
        capitalised = lead[0].upper() + lead[1:]
        if text.startswith(capitalised + " "):
            clause = text[len(capitalised) + 1 :].rstrip(".")
            clause = clause.split(", so the answer is ")[0] if lead in FINAL_LEADS else clause
            return clause[0].lower() + clause[1:] if clause else None
    return None


def _claim_for(scenes: Sequence[Scene], truth: bool, rng: random.Random) -> str:
    if len(scenes) == 1:
        return make_claim(scenes[0], truth, rng)
    side = _below(rng, len(scenes))
    return f"in the {IMAGE_SIDES[side]} image {make_claim(scenes[side], truth, rng)}"


# ---------------------------------------------------------------------------------------------------
# Label noise: how MC estimation mislabels steps
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseModel:
    """How the truth of a rollout's steps and their MC scores are drawn: every mechanism the papers name
    is a field, and `mprm-hf synth` takes each as a flag (see docs/synthetic.md for their measured effect).

    A step's MC score is the share of 16 continuations from its prefix that reach the right answer. Before
    the first error that chance comes from the question's difficulty; after it the policy rarely recovers,
    so later true steps mostly score 0 (false negatives) and false steps score 0 unless the policy recovers
    by luck (pseudo-positives: false steps with a low MC > 0). The final step's MC is the answer check.
    """

    redundancy: float = field(
        default=0.35,
        metadata={"help": "share of easy rollouts: no error, every step's success chance near 1"},
    )
    error_rate: float = field(
        default=0.40,
        metadata={"help": "P(a rollout that is not easy has an error): the corpus's label balance"},
    )
    hard_share: float = field(
        default=0.30,
        metadata={"help": "of rollouts that are not easy: hard questions, low success from a clean prefix"},
    )
    false_after_error: float = field(
        default=0.30, metadata={"help": "P(a body step after the first error is also false)"}
    )
    pseudo_positive: float = field(
        default=0.15, metadata={"help": "P(a false step keeps a small success chance, so its MC can be > 0)"}
    )
    pseudo_positive_range: tuple[float, float] = field(
        default=(0.02, 0.2), metadata={"help": "that success chance"}
    )
    false_negative_after_error: float = field(
        default=0.85, metadata={"help": "P(a true step after the first error has success chance 0)"}
    )
    recovered_range: tuple[float, float] = field(
        default=(0.05, 0.3), metadata={"help": "the other true steps' success chance after an error"}
    )
    final_right_after_error: float = field(
        default=0.10, metadata={"help": "P(the stated answer is still right after an earlier error)"}
    )
    final_right_success: float = field(
        default=0.98, metadata={"help": "success chance of a final step whose answer is right"}
    )
    neutral_first_step: float = field(
        default=0.15, metadata={"help": "P(the first step restates the question: true, no claim)"}
    )
    benchmark_error_rate: float = field(
        default=0.68, metadata={"help": "P(a benchmark trace has an error): the benchmark's label balance"}
    )
    questions_per_scene: tuple[int, int] = field(
        default=(1, 4), metadata={"help": "rollouts sharing one question and image"}
    )


NOISE = NoiseModel()
# Success chance of a clean prefix by difficulty: easy ~ Beta(30, 1), medium ~ Beta(4, 2), hard ~ Beta(1, 4);
# it grows toward the end of the prefix: q + (1 - q) * RAMP * (j + 1) / n.
DIFFICULTY_BETA = ((30.0, 1.0), (4.0, 2.0), (1.0, 4.0))
RAMP = 0.5


@dataclass
class SimulatedSource:
    """One source's rollouts with their hidden truth, for writing and for checking the noise model."""

    source: str
    scenes: list[tuple[Scene, ...]]  # per question
    questions: list[Question]  # per question
    question_of: np.ndarray  # rollout -> question index
    steps: list[list[str]]  # per rollout
    truth: np.ndarray  # flat over all steps: the claim is true
    neutral: np.ndarray  # flat: the step makes no claim
    mc_correct: np.ndarray  # flat: successful MC continuations out of 16
    offsets: np.ndarray  # rollout i owns steps offsets[i]:offsets[i+1]

    def rollout_slice(self, index: int) -> slice:
        return slice(int(self.offsets[index]), int(self.offsets[index + 1]))


def _seeds(seed: int, name: str) -> tuple[np.random.Generator, random.Random]:
    """Independent, reproducible streams per source: outputs do not depend on process scheduling."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(name.encode())])
    state = sequence.generate_state(2)
    return np.random.default_rng(sequence), random.Random(int(state[0]) << 32 | int(state[1]))


def _body_steps(nrng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    """Non-final steps of `n` rollouts of a source whose rollouts have `mean` of them on average."""
    return np.clip(1 + nrng.poisson(max(mean - 1.0, 0.0), n), 1, MC_TOTAL - 1)


def simulate_source(
    source: str, n_rollouts: int, seed: int = 0, noise: NoiseModel = NOISE
) -> SimulatedSource:
    """Draw `n_rollouts` rollouts of `source`: questions on scenes, steps with truth, MC counts."""
    shape = SOURCE_SHAPES[source]
    nrng, prng = _seeds(seed, source)
    kinds = question_kinds(source)
    images_per_question = 2 if kinds == ("compare",) else 1

    # questions, each answered by 1-4 rollouts
    scenes: list[tuple[Scene, ...]] = []
    questions: list[Question] = []
    question_of = np.empty(n_rollouts, dtype=np.int64)
    filled = 0
    low, high = noise.questions_per_scene
    while filled < n_rollouts:
        scene_set = tuple(random_scene(prng) for _ in range(images_per_question))
        scenes.append(scene_set)
        questions.append(make_question(_pick(prng, kinds), scene_set, prng))
        take = min(low + _below(prng, high - low + 1), n_rollouts - filled)
        question_of[filled : filled + take] = len(questions) - 1
        filled += take

    # rollout-level draws: easy (redundant), medium or hard; an error or not
    n = n_rollouts
    n_body = _body_steps(nrng, shape.body_per_rec, n)
    n_steps = n_body + 1
    easy = nrng.random(n) < noise.redundancy
    hard = nrng.random(n) < noise.hard_share
    difficulty = np.where(easy, 0, np.where(hard, 2, 1))
    q_all = np.stack([nrng.beta(a, b, n) for a, b in DIFFICULTY_BETA])
    q = q_all[difficulty, np.arange(n)]
    has_error = ~easy & (nrng.random(n) < noise.error_rate)
    first_error = np.where(has_error, np.floor(nrng.random(n) * n_steps).astype(np.int64), n_steps)

    # step-level draws, vectorised over the whole source
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_steps, out=offsets[1:])
    total = int(offsets[-1])
    rollout = np.repeat(np.arange(n), n_steps)
    j = np.arange(total) - offsets[:-1][rollout]
    steps_here = n_steps[rollout]
    final = j == steps_here - 1
    f = first_error[rollout]
    u = nrng.random(total)
    after = j > f
    truth = (
        (j < f)
        | (after & ~final & (u >= noise.false_after_error))
        | (after & final & (u < noise.final_right_after_error))
    )
    neutral = (j == 0) & ~final & (f > 0) & (nrng.random(total) < noise.neutral_first_step)
    p_clean = q[rollout] + (1.0 - q[rollout]) * RAMP * (j + 1) / steps_here
    lucky = nrng.random(total)
    p_pseudo = np.where(lucky < noise.pseudo_positive, nrng.uniform(*noise.pseudo_positive_range, total), 0.0)
    p_recovered = np.where(
        lucky >= noise.false_negative_after_error, nrng.uniform(*noise.recovered_range, total), 0.0
    )
    p = np.where(j < f, p_clean, np.where(truth, p_recovered, p_pseudo))
    p = np.where(final, np.where(truth, noise.final_right_success, 0.0), p)
    mc_correct = nrng.binomial(MC_TOTAL, p).astype(np.int64)

    # text
    steps: list[list[str]] = []
    truth_list, neutral_list, final_list = truth.tolist(), neutral.tolist(), final.tolist()
    question_list, offset_list = question_of.tolist(), offsets.tolist()
    for i in range(n):
        question = questions[question_list[i]]
        scene_set = scenes[question_list[i]]
        texts = []
        for k in range(offset_list[i], offset_list[i + 1]):
            if final_list[k]:
                stated = question.answer if truth_list[k] else _pick(prng, question.wrong_answers)
                texts.append(final_step(question, stated, prng))
            elif neutral_list[k]:
                texts.append(neutral_step(question, prng))
            else:
                texts.append(body_step(_claim_for(scene_set, truth_list[k], prng), prng))
        steps.append(texts)
    return SimulatedSource(source, scenes, questions, question_of, steps, truth, neutral, mc_correct, offsets)


def truth_statistics(truth: np.ndarray, mc_correct: np.ndarray, offsets: np.ndarray) -> dict[str, Any]:
    """What the noise did, measured: how often the MC label (MC > 0) agrees with the truth, the share of
    false steps among positives in each MC bucket (pseudo-positives), of true steps with MC = 0 (false
    negatives), and the mixed / all-positive / all-negative shares of rollouts by MC label."""
    positive = mc_correct > 0
    steps = max(len(truth), 1)
    buckets = {}
    for name, low, high in MC_BUCKETS:
        inside = positive & (mc_correct >= low) & (mc_correct <= high)
        count = int(inside.sum())
        buckets[name] = {"steps": count, "false": float((~truth[inside]).mean()) if count else None}
    n_rollouts = max(len(offsets) - 1, 1)
    starts = offsets[:-1]
    n_pos = np.add.reduceat(positive.astype(np.int64), starts) if len(truth) else np.zeros(0, np.int64)
    n_steps = np.diff(offsets)
    mc_zero = ~positive
    return {
        "steps": int(len(truth)),
        "false_steps": float((~truth).sum() / steps),
        "mc_zero_steps": float(mc_zero.sum() / steps),
        "mc_truth_agreement": float((positive == truth).sum() / steps),
        "pseudo_positive_by_mc": buckets,
        "false_negative_rate": float((truth & mc_zero).sum() / max(int(truth.sum()), 1)),
        "true_among_mc_zero": float((truth & mc_zero).sum() / max(int(mc_zero.sum()), 1)),
        "rollouts": {
            "mixed": float(((n_pos > 0) & (n_pos < n_steps)).sum() / n_rollouts),
            "all_positive": float((n_pos == n_steps).sum() / n_rollouts),
            "all_negative": float((n_pos == 0).sum() / n_rollouts),
        },
    }


# MC buckets of positive steps (counts out of 16) for the pseudo-positive rate.
MC_BUCKETS = (("1/16", 1, 1), ("2-3/16", 2, 3), ("4-7/16", 4, 7), ("8-15/16", 8, 15), ("16/16", 16, 16))


# ---------------------------------------------------------------------------------------------------
# Writing VisualPRM400K-v1.1-Raw
# ---------------------------------------------------------------------------------------------------

RAW_DIR = "VisualPRM400K-v1.1-Raw"
# The hidden truth of every corpus step, beside (never inside) annotations/: analyses read it, loaders do not.
TRUTH_DIR = "truth"


def allocate_rollouts(total: int) -> dict[str, int]:
    """Split `total` over the 38 sources by their real relative sizes (largest remainder, >= 1 each when possible)."""
    names = sorted(SOURCE_SHAPES)
    weights = np.array([SOURCE_SHAPES[name].records for name in names], dtype=np.float64)
    floor = 1 if total >= len(names) else 0
    rest = total - floor * len(names)
    exact = weights / weights.sum() * rest
    counts = np.floor(exact).astype(np.int64)
    remainder = rest - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:remainder]] += 1
    return {name: int(count) + floor for name, count in zip(names, counts, strict=True)}


def _image_name(index: int, width: int) -> str:
    return f"{index + 1:0{width}d}"


def _remove_pictures(folder: Path) -> None:
    """Drop pictures of an earlier run, so no record of this run can point at another run's picture."""
    if folder.is_dir():
        for stale in folder.glob("*.png"):
            stale.unlink()


def _question_prompt(question: Question, n_images: int) -> str:
    tags = "<image>" if n_images == 1 else "\n".join(f"Image-{i + 1}: <image>" for i in range(n_images))
    return f"{tags}\n{question.text}\n{ROLLOUT_INSTRUCTION}"


def _write_source(job: tuple[str, int, int, str, bool, NoiseModel]) -> dict[str, Any]:
    """Simulate and write one annotation file, its images and its truth sidecar. Runs in a worker process
    for big corpora."""
    source, n_rollouts, seed, out_dir, images, noise = job
    out = Path(out_dir)
    sim = simulate_source(source, n_rollouts, seed, noise)
    width = max(5, len(str(len(sim.questions))))
    image_dir = out / RAW_DIR / source
    _remove_pictures(image_dir)
    paths: list[str | list[str]] = []
    for index, scene_set in enumerate(sim.scenes):
        stem = _image_name(index, width)
        names = [f"{stem}.png"] if len(scene_set) == 1 else [f"{stem}_{s}.png" for s in IMAGE_SIDES]
        rel = [f"{RAW_DIR}/{source}/{name}" for name in names]
        paths.append(rel[0] if len(rel) == 1 else rel)
        if images:
            image_dir.mkdir(parents=True, exist_ok=True)
            for name, scene in zip(names, scene_set, strict=True):
                save_png(draw_scene(scene), image_dir / name)
    prompts = [_question_prompt(q, len(s)) for q, s in zip(sim.questions, sim.scenes, strict=True)]
    mc, question_of, offsets = sim.mc_correct.tolist(), sim.question_of.tolist(), sim.offsets.tolist()
    lines: list[bytes] = []
    for i, steps in enumerate(sim.steps):
        qi = question_of[i]
        start = offsets[i]
        record = {
            "image": paths[qi],
            "question": prompts[qi],
            "question_orig": sim.questions[qi].text,
            "answer": sim.questions[qi].answer,
            "response": "\n\n".join(steps),
            "steps_with_score": [
                {
                    "step": step,
                    "score": mc[start + k] / MC_TOTAL,
                    "num_mc_correct": mc[start + k],
                    "num_mc_total": MC_TOTAL,
                }
                for k, step in enumerate(steps)
            ],
            "num_mc_sequences": MC_TOTAL,
        }
        lines.append(orjson.dumps(record))
    write_bytes_atomic(out / "annotations" / f"{source}.jsonl", b"\n".join(lines) + b"\n" if lines else b"")
    truth, neutral = sim.truth.tolist(), sim.neutral.tolist()
    truth_lines = [
        orjson.dumps(
            {
                "id": f"{source}:{i + 1}",
                "truth": truth[offsets[i] : offsets[i + 1]],
                "neutral": neutral[offsets[i] : offsets[i + 1]],
            }
        )
        for i in range(n_rollouts)
    ]
    write_bytes_atomic(
        out / TRUTH_DIR / f"{source}.jsonl", b"\n".join(truth_lines) + b"\n" if truth_lines else b""
    )
    n_images = sum(len(s) for s in sim.scenes) if images else 0
    return {
        "rollouts": n_rollouts,
        "steps": int(sim.offsets[-1]),
        "incorrect_steps": int((~sim.truth).sum()),
        "mc_zero_steps": int((sim.mc_correct == 0).sum()),
        "images": n_images,
        "arrays": (sim.truth, sim.mc_correct, np.diff(sim.offsets)),
    }


# ---------------------------------------------------------------------------------------------------
# VisualProcessBench
# ---------------------------------------------------------------------------------------------------

BENCHMARK_DIR = "VisualProcessBench"
# Relative sizes of the five real sources (records in the real test split, rounded).
BENCHMARK_SOURCES: dict[str, int] = {
    "MMMU_DEV_VAL": 267,
    "MathVision_MINI": 712,
    "MathVerse_MINI_Vision_Only": 1026,
    "DynaMath": 570,
    "WeMath": 291,
}
POLICY_MODELS = (
    "GPT4o_20241120_tem07",
    "Claude3-5V_Sonnet_20241022_tem07",
    "lmdeploy_qvq",
    "lmdeploy_internvl",
)
REAL_BENCHMARK_RECORDS = 2866
REAL_MISSING_IMAGE_RECORDS = 25


@dataclass(frozen=True)
class BenchmarkShape:
    """The benchmark's traces: longer than the corpus's and with more errors, labelled by the truth."""

    mean_steps: float = 9.4  # 26,950 steps / 2,866 records
    false_after_error: float = 0.75  # errors propagate: later steps mostly wrong
    final_right_after_error: float = 0.10
    neutral_first_step: float = 0.35
    neutral_step: float = 0.09
    two_image_share: float = 0.3  # of MMMU_DEV_VAL records


BENCHMARK = BenchmarkShape()


@dataclass
class BenchmarkRecord:
    source: str
    policy_model: str
    scenes: tuple[Scene, ...]
    question: str
    answer: str
    steps: list[str]
    labels: list[int]
    missing_image: bool


def simulate_benchmark(
    n_traces: int, seed: int = 0, shape: BenchmarkShape = BENCHMARK, noise: NoiseModel = NOISE
) -> list[BenchmarkRecord]:
    """Draw benchmark traces: labels are the truth of each claim (1 / -1), restatements are 0 (neutral).

    `noise.benchmark_error_rate` sets the share of traces with an error (the benchmark's label balance)."""
    nrng, prng = _seeds(seed, BENCHMARK_DIR)
    names = list(BENCHMARK_SOURCES)
    weights = np.array(list(BENCHMARK_SOURCES.values()), dtype=np.float64)
    sources = nrng.choice(len(names), size=n_traces, p=weights / weights.sum())
    n_missing = round(n_traces * REAL_MISSING_IMAGE_RECORDS / REAL_BENCHMARK_RECORDS)
    missing = set(nrng.choice(n_traces, size=n_missing, replace=False).tolist()) if n_missing else set()
    records = []
    for i in range(n_traces):
        source = names[int(sources[i])]
        two_images = source == "MMMU_DEV_VAL" and i not in missing and prng.random() < shape.two_image_share
        scene_set = tuple(random_scene(prng) for _ in range(2 if two_images else 1))
        kind = "compare" if two_images else _pick(prng, SINGLE_IMAGE_QUESTIONS)
        question = make_question(kind, scene_set, prng)
        text = question.text
        if two_images:
            text = f"Look at <image1> and <image2>. {text}"
        elif i in missing:  # the real benchmark has records naming an image it does not supply
            text = f"Compare <image1> with <image2>. {text}"
        n_steps = max(2, 1 + int(nrng.poisson(shape.mean_steps - 1.0)))
        has_error = prng.random() < noise.benchmark_error_rate
        first_error = int(nrng.integers(0, n_steps)) if has_error else n_steps
        steps: list[str] = []
        labels: list[int] = []
        for j in range(n_steps):
            final = j == n_steps - 1
            if j == first_error:
                truth = False
            elif j < first_error:
                truth = True
            else:
                threshold = shape.final_right_after_error if final else 1.0 - shape.false_after_error
                truth = prng.random() < threshold
            neutral_p = shape.neutral_first_step if j == 0 else shape.neutral_step
            if not final and j != first_error and prng.random() < neutral_p:
                steps.append(neutral_step(question, prng))
                labels.append(0)
                continue
            if final:
                stated = question.answer if truth else _pick(prng, question.wrong_answers)
                steps.append(final_step(question, stated, prng))
            else:
                steps.append(body_step(_claim_for(scene_set, truth, prng), prng))
            labels.append(1 if truth else -1)
        policy = _pick(prng, POLICY_MODELS)
        records.append(
            BenchmarkRecord(source, policy, scene_set, text, question.answer, steps, labels, i in missing)
        )
    return records


def _write_benchmark(
    out: Path, n_traces: int, seed: int, images: bool, noise: NoiseModel = NOISE
) -> dict[str, object]:
    root = out / BENCHMARK_DIR
    root.mkdir(parents=True, exist_ok=True)
    records = simulate_benchmark(n_traces, seed, noise=noise)
    width = max(5, len(str(n_traces)))
    for source in BENCHMARK_SOURCES:
        _remove_pictures(root / "images" / source)
    lines = []
    n_images = 0
    for i, record in enumerate(records):
        stem = _image_name(i, width)
        names = [f"{stem}.png"] if len(record.scenes) == 1 else [f"{stem}_{k + 1}.png" for k in range(2)]
        rel = [f"images/{record.source}/{name}" for name in names]
        if images:
            (root / "images" / record.source).mkdir(parents=True, exist_ok=True)
            for path, scene in zip(rel, record.scenes, strict=True):
                save_png(draw_scene(scene), root / path)
                n_images += 1
        lines.append(
            orjson.dumps(
                {
                    "image": rel,
                    "question": record.question,
                    "answer": record.answer,
                    "response": {"steps": record.steps, "process_correctness": record.labels},
                    "policy_model": record.policy_model,
                    "data_source": record.source,
                }
            )
        )
    write_bytes_atomic(root / "test.jsonl", b"\n".join(lines) + b"\n" if lines else b"")
    labels = Counter(label for record in records for label in record.labels)
    return {
        "traces": n_traces,
        "steps": sum(labels.values()),
        "labels": {"correct": labels[1], "incorrect": labels[-1], "neutral": labels[0]},
        "images": n_images,
    }


# ---------------------------------------------------------------------------------------------------
# Best-of-N candidate pools
# ---------------------------------------------------------------------------------------------------

BON_DIR = "BestOfN"
DEFAULT_BON_CANDIDATES = 16
# A policy's wrong answers cluster: this share of its wrong final answers repeat the question's one
# favourite wrong answer (the rest spread over the others), which is what beats majority vote on hard
# questions.
FAVOURITE_WRONG = 0.5


@dataclass
class PoolQuestion:
    """One pool question with its pictures and its candidates (the pool record without image paths)."""

    source: str
    index: int
    scenes: tuple[Scene, ...]
    question: Question
    candidates: list[dict[str, Any]]


def simulate_pool(
    n_questions: int, n_candidates: int, seed: int = 0, noise: NoiseModel = NOISE
) -> list[PoolQuestion]:
    """Questions split over the corpus's sources by their sizes, each answered `n_candidates` times by a
    simulated policy with the corpus's generators and difficulty model: a candidate of a question whose
    clean-prefix success chance is q has no error with probability q; otherwise its first error falls on
    a uniform step (the final one included), later steps are false as in the corpus, and its stated answer
    is right only by recovery."""
    pool = []
    for source, count in allocate_rollouts(n_questions).items():
        if count == 0:
            continue
        shape = SOURCE_SHAPES[source]
        nrng, prng = _seeds(seed, f"{BON_DIR}:{source}")
        kinds = question_kinds(source)
        images_per_question = 2 if kinds == ("compare",) else 1
        for index in range(count):
            scene_set = tuple(random_scene(prng) for _ in range(images_per_question))
            question = make_question(_pick(prng, kinds), scene_set, prng)
            difficulty = (
                0 if nrng.random() < noise.redundancy else 2 if nrng.random() < noise.hard_share else 1
            )
            success = float(nrng.beta(*DIFFICULTY_BETA[difficulty]))
            favourite = _pick(prng, question.wrong_answers)
            n_steps = _body_steps(nrng, shape.body_per_rec, n_candidates) + 1
            candidates = []
            for k in range(n_candidates):
                steps_here = int(n_steps[k])
                first_error = steps_here if nrng.random() < success else int(nrng.integers(0, steps_here))
                steps = []
                for j in range(steps_here):
                    final = j == steps_here - 1
                    if j != first_error:
                        after = noise.final_right_after_error if final else 1.0 - noise.false_after_error
                        truth = j < first_error or prng.random() < after
                    else:
                        truth = False
                    if final:
                        stated = question.answer
                        if not truth:
                            stated = (
                                favourite
                                if prng.random() < FAVOURITE_WRONG
                                else _pick(prng, question.wrong_answers)
                            )
                        steps.append(final_step(question, stated, prng))
                    elif j == 0 and first_error > 0 and prng.random() < noise.neutral_first_step:
                        steps.append(neutral_step(question, prng))
                    else:
                        steps.append(body_step(_claim_for(scene_set, truth, prng), prng))
                candidates.append({"steps": steps, "answer": stated, "correct": stated == question.answer})
            pool.append(PoolQuestion(source, index, scene_set, question, candidates))
    return pool


def write_bon_pool(
    out_dir: str | Path,
    n_questions: int,
    n_candidates: int = DEFAULT_BON_CANDIDATES,
    *,
    seed: int = 0,
    noise: NoiseModel = NOISE,
    images: bool = True,
) -> dict[str, Any]:
    """Write a best-of-N pool (mprm_hf.data.bon_pool's format: jsonl, pictures, dataset card) to
    `out_dir/BestOfN`, the whole folder at once; return its summary."""
    from mprm_hf.data.bon_pool import write_pool
    from mprm_hf.fileio import atomic_output

    if n_questions < 1 or n_candidates < 1:
        raise MPRMError(f"a pool needs >= 1 question and >= 1 candidate (got {n_questions}, {n_candidates})")
    target = Path(out_dir) / BON_DIR
    pool = simulate_pool(n_questions, n_candidates, seed, noise)
    records = []
    with atomic_output(target, folder=True) as folder:
        for item in pool:
            stem = _image_name(item.index, 5)
            names = [f"{stem}.png"] if len(item.scenes) == 1 else [f"{stem}_{s}.png" for s in IMAGE_SIDES]
            rel = [f"images/{item.source}/{name}" for name in names]
            if images:
                (folder / "images" / item.source).mkdir(parents=True, exist_ok=True)
                for path, scene in zip(rel, item.scenes, strict=True):
                    save_png(draw_scene(scene), folder / path)
            records.append(
                {
                    "id": f"{item.source}:{item.index + 1}",
                    "source": item.source,
                    "images": rel,
                    "question": item.question.text,
                    "answer": item.question.answer,
                    "candidates": item.candidates,
                }
            )
        made_by = f"mprm-hf synth --bon-questions {n_questions} --bon-candidates {n_candidates} --seed {seed}"
        write_pool(folder, records, pretty_name="Synthetic best-of-N pool", made_by=made_by)
    options = [option for item in pool for option in item.candidates]
    return {
        "questions": len(pool),
        "candidates": n_candidates,
        "correct": sum(option["correct"] for option in options) / len(options),
        "pass_at_k": sum(any(o["correct"] for o in item.candidates) for item in pool) / len(pool),
    }


# ---------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------

DEFAULT_ROLLOUTS = 4000
DEFAULT_BENCHMARK_TRACES = 300
SUMMARY_FILE = "synth.json"
PARALLEL_FROM = 50_000  # below this, starting worker processes costs more than it saves


def write_synthetic(
    out_dir: str | Path,
    *,
    rollouts: int = DEFAULT_ROLLOUTS,
    benchmark_traces: int = DEFAULT_BENCHMARK_TRACES,
    seed: int = 0,
    images: bool = True,
    workers: int | None = None,
    noise: NoiseModel = NOISE,
    bon_questions: int = 0,
    bon_candidates: int = DEFAULT_BON_CANDIDATES,
) -> dict:
    """Write the synthetic VisualPRM400K-v1.1-Raw, its truth sidecar and VisualProcessBench under `out_dir`
    (and, with `bon_questions`, a best-of-N pool in `out_dir/BestOfN`); return a summary with the measured
    truth statistics (also written to `out_dir/synth.json`).

    The bytes written depend only on the arguments (each source has its own seed stream), whatever
    `workers` is. `workers` defaults to 2 processes for corpora of 50,000 rollouts or more. Pictures of
    an earlier run in the world's own picture folders are removed first.
    """
    if rollouts < 0 or benchmark_traces < 0:
        raise MPRMError(f"rollouts and benchmark_traces must be >= 0 (got {rollouts}, {benchmark_traces})")
    if bon_questions < 0 or bon_candidates < 1:
        raise MPRMError(
            f"bon_questions must be >= 0 and bon_candidates >= 1 (got {bon_questions}, {bon_candidates})"
        )
    if workers is not None and workers < 1:
        raise MPRMError(f"workers must be >= 1 (got {workers})")
    out = Path(out_dir)
    try:
        (out / "annotations").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MPRMError(f"cannot create output folder {out}: {error.strerror}") from error
    allocation = allocate_rollouts(rollouts)
    # biggest first, so two workers finish together
    jobs = [
        (name, count, seed, str(out), images, noise)
        for name, count in sorted(allocation.items(), key=lambda item: (-item[1], item[0]))
    ]
    if workers is None:
        workers = 2 if rollouts >= PARALLEL_FROM else 1
    per_source: dict[str, dict[str, Any]] = {}
    with tqdm(total=rollouts, unit="rollout", desc="synth", disable=rollouts < PARALLEL_FROM) as bar:
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for job, stats in zip(jobs, pool.imap(_write_source, jobs), strict=True):
                    per_source[job[0]] = stats
                    bar.update(stats["rollouts"])
        else:
            for job in jobs:
                per_source[job[0]] = _write_source(job)
                bar.update(job[1])
    benchmark = _write_benchmark(out, benchmark_traces, seed, images, noise)
    arrays = [per_source[name].pop("arrays") for name in sorted(per_source)]
    lengths = np.concatenate([a[2] for a in arrays])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    statistics = truth_statistics(
        np.concatenate([a[0] for a in arrays]), np.concatenate([a[1] for a in arrays]), offsets
    )
    totals = {
        key: sum(stats[key] for stats in per_source.values()) for key in next(iter(per_source.values()))
    }
    summary = {
        "out_dir": str(out),
        "seed": seed,
        "noise": asdict(noise),
        "sources": len(per_source),
        **totals,
        "truth": statistics,
        "per_source": {name: per_source[name]["rollouts"] for name in sorted(per_source)},
        "benchmark": benchmark,
    }
    if bon_questions:
        summary["bon"] = write_bon_pool(
            out, bon_questions, bon_candidates, seed=seed, noise=noise, images=images
        )
    # the file holds no path, so the same arguments write the same bytes wherever they are written
    portable = {key: value for key, value in summary.items() if key != "out_dir"}
    write_bytes_atomic(out / SUMMARY_FILE, orjson.dumps(portable, option=orjson.OPT_INDENT_2) + b"\n")
    return summary


def load_truth(out_dir: str | Path) -> dict[str, list[bool]]:
    """The hidden truth of every corpus step, by rollout id (`source:line`, as the loaders name rollouts)."""
    folder = Path(out_dir) / TRUTH_DIR
    if not folder.is_dir():
        raise MPRMError(f"{folder}: no truth sidecar (written by `mprm-hf synth`)")
    truth: dict[str, list[bool]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                record = orjson.loads(raw)
                truth[record["id"]] = [bool(value) for value in record["truth"]]
            except (orjson.JSONDecodeError, KeyError, TypeError) as error:
                raise MPRMError(f"{path}:{number}: not a truth record ({error})") from None
    return truth


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """`n` texts in the world's vocabulary (questions, instructions, steps, benchmark traces) for a tokenizer."""
    if n <= 0:
        return []
    n_benchmark = n // 5
    allocation = allocate_rollouts(n - n_benchmark)
    texts = []
    for source, count in allocation.items():
        if count == 0:
            continue
        sim = simulate_source(source, count, seed)
        for i, steps in enumerate(sim.steps):
            question = sim.questions[int(sim.question_of[i])]
            prompt = _question_prompt(question, len(sim.scenes[int(sim.question_of[i])]))
            texts.append(prompt + "\n\n" + "\n\n".join(steps))
    for record in simulate_benchmark(n_benchmark, seed):
        texts.append(record.question + "\n\n" + "\n\n".join(record.steps))
    random.Random(seed).shuffle(texts)
    return texts


def noise_from_config(path: str | Path | None, overrides: dict[str, Any]) -> NoiseModel:
    """A `NoiseModel` from a YAML mapping of its fields (optional) and flag overrides (None = not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        import yaml

        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise MPRMError(f"{path}: cannot read the noise config ({first_line(error)})") from None
        if not isinstance(loaded, dict):
            raise MPRMError(f"{path}: the noise config must be a mapping of NoiseModel fields")
        values.update(loaded)
    values.update({key: value for key, value in overrides.items() if value is not None})
    where = path or "flags"
    known = [f.name for f in fields(NoiseModel)]
    for key, value in values.items():
        if key not in known:
            raise MPRMError(f"{where}: unknown noise field {key!r} (known: {', '.join(known)})")
        default = getattr(NOISE, key)
        numbers = value if isinstance(value, (list, tuple)) else (value,)
        if isinstance(default, tuple) and len(numbers) != len(default):
            raise MPRMError(f"{where}: noise field {key!r} takes {len(default)} numbers, got {value!r}")
        if any(isinstance(n, bool) or not isinstance(n, (int, float)) for n in numbers):
            raise MPRMError(f"{where}: noise field {key!r} must be a number or numbers, got {value!r}")
        if isinstance(default, tuple):
            values[key] = tuple(value)
    noise = NoiseModel(**values)
    for key in known:
        value = getattr(noise, key)
        for number in value if isinstance(value, tuple) else (value,):
            if isinstance(number, float) and not 0.0 <= number <= 1.0:
                raise MPRMError(f"{where}: noise field {key!r} must be in [0, 1], got {number}")
    return noise


def format_summary(summary: dict[str, Any]) -> str:
    """What `synth` prints: sizes, then the measured truth statistics of what it wrote."""
    bench = summary["benchmark"]
    truth = summary["truth"]
    shares = truth["rollouts"]
    buckets = ", ".join(
        f"{name} {value['false']:.1%}" if value["false"] is not None else f"{name} -"
        for name, value in truth["pseudo_positive_by_mc"].items()
    )
    labels = bench["labels"]
    judged = max(labels["correct"] + labels["incorrect"], 1)
    out = Path(summary["out_dir"])
    return (
        f"wrote {summary['rollouts']:,} rollouts ({summary['steps']:,} steps, "
        f"{truth['false_steps']:.1%} false, {truth['mc_zero_steps']:.1%} with MC = 0) "
        f"in {summary['sources']} sources to {out / 'annotations'} (truth in {out / TRUTH_DIR})\n"
        f"  MC label vs truth: {truth['mc_truth_agreement']:.1%} agree; false negatives (true, MC = 0) "
        f"{truth['false_negative_rate']:.1%} of true steps, {truth['true_among_mc_zero']:.1%} of MC = 0 steps\n"
        f"  pseudo-positives (false among MC > 0) by MC: {buckets}\n"
        f"  rollouts: {shares['mixed']:.1%} mixed, {shares['all_positive']:.1%} all-positive, "
        f"{shares['all_negative']:.1%} all-negative\n"
        f"wrote {bench['traces']:,} VisualProcessBench traces ({bench['steps']:,} steps: "
        f"{labels['correct']:,} correct, {labels['incorrect']:,} incorrect "
        f"({labels['incorrect'] / judged:.1%} of judged), {labels['neutral']:,} neutral) "
        f"to {out / BENCHMARK_DIR / 'test.jsonl'}\n"
        f"images: {summary['images'] + bench['images']:,}"
    ) + (
        f"\nwrote a best-of-N pool of {summary['bon']['questions']:,} questions x {summary['bon']['candidates']} "
        f"candidates ({summary['bon']['correct']:.1%} correct, pass@K {summary['bon']['pass_at_k']:.1%}) "
        f"to {out / BON_DIR}"
        if "bon" in summary
        else ""
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mprm-hf synth",
        description="Write a synthetic VisualPRM400K-v1.1-Raw corpus (with its truth sidecar) and "
        "VisualProcessBench in the real layouts.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--rollouts",
        type=int,
        default=DEFAULT_ROLLOUTS,
        metavar="N",
        help=f"rollouts in all, split over the 38 sources (default {DEFAULT_ROLLOUTS}; "
        f"real: {FULL_SIZE_ROLLOUTS:,})",
    )
    parser.add_argument(
        "--benchmark-traces",
        type=int,
        default=DEFAULT_BENCHMARK_TRACES,
        metavar="N",
        help=f"VisualProcessBench records (default {DEFAULT_BENCHMARK_TRACES})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="same arguments, same bytes (default 0)"
    )
    parser.add_argument(
        "--no-images", action="store_true", help="write annotations only (image paths still set)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="W", help="processes (default: 2 from 50,000 rollouts)"
    )
    parser.add_argument(
        "--bon-questions",
        type=int,
        default=0,
        metavar="Q",
        help=f"also write a best-of-N candidate pool of Q questions to DIR/{BON_DIR} (default 0: none)",
    )
    parser.add_argument(
        "--bon-candidates",
        type=int,
        default=DEFAULT_BON_CANDIDATES,
        metavar="K",
        help=f"candidates per pool question (default {DEFAULT_BON_CANDIDATES})",
    )
    knobs = parser.add_argument_group(
        "noise model", "each mechanism of MC label noise (docs/synthetic.md); flags override --noise"
    )
    knobs.add_argument("--noise", type=Path, metavar="YAML", help="a mapping of the fields below")
    for field_ in fields(NoiseModel):
        default = getattr(NOISE, field_.name)
        knobs.add_argument(
            f"--{field_.name.replace('_', '-')}",
            dest=f"noise_{field_.name}",
            type=type(default[0]) if isinstance(default, tuple) else type(default),
            nargs=len(default) if isinstance(default, tuple) else None,
            metavar="X",
            help=f"{field_.metadata['help']} (default {default})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {f.name: getattr(args, f"noise_{f.name}") for f in fields(NoiseModel)}
    noise = noise_from_config(args.noise, overrides)
    started = time.perf_counter()
    summary = write_synthetic(
        args.out,
        rollouts=args.rollouts,
        benchmark_traces=args.benchmark_traces,
        seed=args.seed,
        images=not args.no_images,
        workers=args.workers,
        noise=noise,
        bon_questions=args.bon_questions,
        bon_candidates=args.bon_candidates,
    )
    print(f"{format_summary(summary)}; {time.perf_counter() - started:.1f} s")
    return 0
