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
import multiprocessing
import random
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import orjson
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from mprm_hf.data.synthetic_sources import FULL_SIZE_ROLLOUTS, SOURCE_SHAPES
from mprm_hf.errors import MPRMError

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
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
BACKGROUND = (245, 245, 245)
IMAGE_SIZE = 56  # 2x2 cells of 28 px: one merged 28x28 vision token per cell for Qwen2-VL
CELL_SIZE = 28
SHAPE_MARGIN = 5
MC_TOTAL = 16
EMPTY = 0
CHOICE_LETTERS = ("A", "B", "C", "D")

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
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    low, high = SHAPE_MARGIN, CELL_SIZE - SHAPE_MARGIN - 1
    for position, code in enumerate(scene):
        if code == EMPTY:
            continue
        x, y = cell_box(position)
        fill = COLOURS[COLOUR_NAMES[cell_colour(code)]]
        shape = SHAPES[cell_shape(code)]
        if shape == "circle":
            draw.ellipse((x + low, y + low, x + high, y + high), fill=fill)
        elif shape == "square":
            draw.rectangle((x + low, y + low, x + high, y + high), fill=fill)
        else:
            draw.polygon(
                [(x + CELL_SIZE // 2, y + low), (x + low, y + high), (x + high, y + high)], fill=fill
            )
    return image


def save_png(image: Image.Image, path: Path) -> None:
    # Fixed encoder settings: the same scene always gives the same bytes.
    image.save(path, format="PNG", optimize=False, compress_level=6)


def _below(rng: random.Random, n: int) -> int:
    """A uniform integer in [0, n): `randrange` costs several times more, and this runs per word group."""
    return int(rng.random() * n)


def _pick(rng: random.Random, items: Sequence[T]) -> T:
    return items[int(rng.random() * len(items))]


def random_scene(rng: random.Random) -> Scene:
    """Each cell empty with probability 0.3, at least one shape."""
    while True:
        cells = tuple(
            EMPTY
            if rng.random() < 0.3
            else cell_code(_below(rng, len(SHAPES)), _below(rng, len(COLOUR_NAMES)))
            for _ in POSITIONS
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


CLAIM_KINDS = ("colour_at", "shape_at", "occupancy", "count_colour", "count_shape", "count_all", "there_is")
MAX_COUNT = len(POSITIONS)


def make_claim(scene: Scene, truth: bool, rng: random.Random) -> str:
    """One claim about `scene`, true or false as asked; the templates are regular so tests can parse them."""
    kind = _pick(rng, CLAIM_KINDS)
    filled = [p for p, code in enumerate(scene) if code != EMPTY]
    if kind in {"colour_at", "shape_at"}:
        position = _pick(rng, filled)
        code = scene[position]
        if kind == "colour_at":
            colour = cell_colour(code) if truth else _other(rng, len(COLOUR_NAMES), cell_colour(code))
            return f"the shape in the {POSITIONS[position]} is {COLOUR_NAMES[colour]}"
        shape = cell_shape(code) if truth else _other(rng, len(SHAPES), cell_shape(code))
        return f"the shape in the {POSITIONS[position]} is a {SHAPES[shape]}"
    if kind == "occupancy":
        position = _below(rng, len(POSITIONS))
        empty = scene[position] == EMPTY
        says_empty = empty if truth else not empty
        return f"the {POSITIONS[position]} cell is {'empty' if says_empty else 'not empty'}"
    if kind == "there_is":
        position = _pick(rng, filled)
        code = scene[position]
        if not truth:  # name the same shape in a cell that does not hold it, else recolour it
            others = [p for p in range(len(POSITIONS)) if scene[p] != code]
            if others:
                position = _pick(rng, others)
            else:
                code = cell_code(cell_shape(code), _other(rng, len(COLOUR_NAMES), cell_colour(code)))
        return f"there is a {COLOUR_NAMES[cell_colour(code)]} {SHAPES[cell_shape(code)]} in the {POSITIONS[position]}"
    if kind == "count_colour":
        colour = _below(rng, len(COLOUR_NAMES))
        count, subject = _count(scene, colour=colour), f"{COLOUR_NAMES[colour]} shapes"
    elif kind == "count_shape":
        shape = _below(rng, len(SHAPES))
        count, subject = _count(scene, shape=shape), f"{SHAPES[shape]}s"
    else:
        count, subject = _count(scene), "shapes"
    stated = count if truth else _other(rng, MAX_COUNT + 1, count)
    return f"the number of {subject} is {stated}"


# Questions: (kind, text, answer, wrong answers a rollout may state instead).
@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    wrong_answers: tuple[str, ...]


def _yes_no(value: bool) -> tuple[str, tuple[str, ...]]:
    return ("yes", ("no",)) if value else ("no", ("yes",))


def _counted(count: int) -> tuple[str, tuple[str, ...]]:
    return str(count), tuple(str(k) for k in range(MAX_COUNT + 1) if k != count)


def make_question(kind: str, scenes: Sequence[Scene], rng: random.Random) -> Question:
    scene = scenes[0]
    filled = [p for p, code in enumerate(scene) if code != EMPTY]
    if kind == "count_colour":
        colour = _below(rng, len(COLOUR_NAMES))
        answer, wrong = _counted(_count(scene, colour=colour))
        return Question(f"How many {COLOUR_NAMES[colour]} shapes are there in the image?", answer, wrong)
    if kind == "count_shape":
        shape = _below(rng, len(SHAPES))
        answer, wrong = _counted(_count(scene, shape=shape))
        return Question(f"How many {SHAPES[shape]}s are there in the image?", answer, wrong)
    if kind == "count_all":
        answer, wrong = _counted(_count(scene))
        return Question("How many shapes are there in the image?", answer, wrong)
    if kind == "colour_at":
        position = _pick(rng, filled)
        colour = COLOUR_NAMES[cell_colour(scene[position])]
        wrong = tuple(c for c in COLOUR_NAMES if c != colour)
        return Question(f"What colour is the shape in the {POSITIONS[position]}?", colour, wrong)
    if kind == "shape_at":
        position = _pick(rng, filled)
        shape = SHAPES[cell_shape(scene[position])]
        wrong = tuple(s for s in SHAPES if s != shape)
        return Question(f"What shape is in the {POSITIONS[position]}?", shape, wrong)
    if kind == "exists":
        if rng.random() < 0.5:  # ask about a shape that is there
            code = scene[_pick(rng, filled)]
        else:
            code = cell_code(_below(rng, len(SHAPES)), _below(rng, len(COLOUR_NAMES)))
        answer, wrong = _yes_no(code in scene)
        text = f"Is there a {COLOUR_NAMES[cell_colour(code)]} {SHAPES[cell_shape(code)]} in the image?"
        return Question(text, answer, wrong)
    if kind == "choice":
        position = _pick(rng, filled)
        options = list(COLOUR_NAMES)
        rng.shuffle(options)
        letter = CHOICE_LETTERS[options.index(COLOUR_NAMES[cell_colour(scene[position])])]
        listing = "\n".join(f"({L}) {option}" for L, option in zip(CHOICE_LETTERS, options, strict=True))
        text = f"What colour is the shape in the {POSITIONS[position]}?\nChoices:\n{listing}"
        return Question(text, letter, tuple(L for L in CHOICE_LETTERS if letter != L))
    if kind == "compare":
        answer, wrong = _yes_no(_count(scenes[0]) > _count(scenes[1]))
        return Question("Is it true that the left image has more shapes than the right image?", answer, wrong)
    raise ValueError(f"unknown question kind {kind!r}")


SINGLE_IMAGE_QUESTIONS = (
    "count_colour",
    "count_shape",
    "count_all",
    "colour_at",
    "shape_at",
    "exists",
    "choice",
)


def question_kinds(source: str) -> tuple[str, ...]:
    """The question kinds a source asks, loosely after what the real source asks (yes/no, counts, choices)."""
    if source.startswith("nlvr2"):
        return ("compare",)
    if "yorn" in source or "exist" in source:
        return ("exists",)
    if source.endswith("_int") or "int_only" in source or "clevr_math" in source.lower():
        return ("count_colour", "count_shape", "count_all")
    if any(key in source for key in ("multi_choice", "m3cot", "ai2d", "iconqa")):
        return ("choice",)
    return SINGLE_IMAGE_QUESTIONS


ROLLOUT_INSTRUCTION = (
    "Answer the question step by step, one step per paragraph, and end with: so the answer is ANSWER."
)
IMAGE_SIDES = ("left", "right")

# Filler: neutral words that carry no claim (no colour, shape, position or number words).
FILLER_PHRASES = (
    "we look at the picture with care",
    "this part of the picture matters for the question",
    "so we keep this fact in mind",
    "it helps to check each part of the figure",
    "we go on to the next part of the reasoning",
    "this agrees with what we saw before",
    "we write this down before we move on",
    "now we think about what this means",
    "the picture is clear enough to see this",
    "we need this to reach the final result",
    "we should be careful and not rush",
    "after that we can compare the parts",
    "this is an important detail",
    "we check it again to be sure",
    "the figure shows this plainly",
    "with this we get closer to the result",
)
BODY_LEADS = ("Looking at the image,", "Next,", "We see that", "Then", "Also,", "Checking the picture,")
NEUTRAL_STEPS = (
    "We read the question again and look at the whole image.",
    "We restate the task before we check the picture.",
    "Let us go through the picture step by step.",
)


class _Filler:
    """Slices of one long filler text, so a step's padding costs one string slice."""

    def __init__(self, repeats: int = 64) -> None:
        order = random.Random(1234)
        phrases: list[str] = []
        for _ in range(repeats):
            block = list(FILLER_PHRASES)
            order.shuffle(block)
            phrases.extend(block)
        words = " ".join(phrases).split(" ")
        self.text = " ".join(words)
        self.word_start = [0]
        for word in words:
            self.word_start.append(self.word_start[-1] + len(word) + 1)
        self.phrase_starts: list[int] = []
        index = 0
        for phrase in phrases:
            self.phrase_starts.append(index)
            index += phrase.count(" ") + 1
        self.max_words = len(words)
        # phrase starts that leave room for the longest padding we ask for
        self.usable_starts = [s for s in self.phrase_starts if s + self.MAX_PAD <= self.max_words]

    MAX_PAD = 200

    def words(self, count: int, rng: random.Random) -> str:
        count = min(count, self.MAX_PAD)
        start = _pick(rng, self.usable_starts)
        return self.text[self.word_start[start] : self.word_start[start + count] - 1]


_FILLER = _Filler()


def _length(claim: str) -> int:
    return claim.count(" ") + 1


def body_step(claim: str, target_words: int, rng: random.Random) -> str:
    lead = _pick(rng, BODY_LEADS)
    pad = target_words - _length(lead) - _length(claim)
    if pad < 3:
        return f"{lead} {claim}."
    return f"{lead} {claim}, and {_FILLER.words(pad - 1, rng)}."


def neutral_step(question: Question, target_words: int, rng: random.Random) -> str:
    if rng.random() < 0.5:
        head = f"The question asks: {question.text.splitlines()[0]}"
    else:
        head = _pick(rng, NEUTRAL_STEPS)
    pad = target_words - _length(head)
    if pad < 3:
        return head
    filler = _FILLER.words(pad, rng)
    return f"{head} {filler[0].upper()}{filler[1:]}."


def final_step(stated_answer: str, target_words: int, rng: random.Random) -> str:
    tail = f"so the answer is {stated_answer}."
    pad = target_words - _length(tail)
    if pad < 2:
        return "S" + tail[1:]
    filler = _FILLER.words(pad, rng)
    return f"{filler[0].upper()}{filler[1:]}, {tail}"


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
    """How the truth of a rollout's steps and their MC scores are drawn.

    The policy's chance to finish correctly from an error-free prefix depends on the question's
    difficulty (easy / medium / hard, Beta-distributed), so hard questions give true steps MC = 0
    (false negatives). After the first error the policy rarely recovers: later steps, true or false,
    mostly get MC = 0, and a few get a small success probability (pseudo-positives with MC 1-3/16).
    The final step's MC is the answer check: high when the stated answer is right, 0 otherwise.
    """

    difficulty_probs: tuple[float, float, float] = (0.45, 0.35, 0.20)
    difficulty_beta: tuple[tuple[float, float], ...] = ((30.0, 1.0), (4.0, 2.0), (1.0, 4.0))
    error_probs: tuple[float, float, float] = (0.12, 0.30, 0.55)  # P(rollout has an error | difficulty)
    false_after_error: float = 0.30  # P(a later body step is also false)
    final_right_after_error: float = 0.10  # P(the answer is still right after an earlier error)
    ramp: float = 0.5  # success grows toward the end of an error-free prefix: q + (1 - q) * ramp * (j+1)/n
    recover_prob: float = 0.2  # P(a step at or after the first error keeps some success probability)
    recover_range: tuple[float, float] = (0.02, 0.15)
    final_right_success: float = 0.98
    neutral_first_step: float = 0.15  # P(the first step restates the question: true, no claim)
    words_spread: float = 0.35  # relative standard deviation of a step's word count
    questions_per_scene: tuple[int, int] = (1, 4)  # rollouts sharing one question and image


NOISE = NoiseModel()


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


def _word_targets(rng: np.random.Generator, size: int, mean: float, spread: float) -> np.ndarray:
    return np.maximum(4, np.rint(rng.normal(mean, spread * mean, size))).astype(np.int64)


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

    # rollout-level draws
    n = n_rollouts
    n_body = np.clip(1 + nrng.poisson(max(shape.body_per_rec - 1.0, 0.0), n), 1, MC_TOTAL - 1)
    n_steps = n_body + 1
    difficulty = nrng.choice(3, size=n, p=np.asarray(noise.difficulty_probs))
    q_all = np.stack([nrng.beta(a, b, n) for a, b in noise.difficulty_beta])
    q = q_all[difficulty, np.arange(n)]
    has_error = nrng.random(n) < np.asarray(noise.error_probs)[difficulty]
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
    p_clean = q[rollout] + (1.0 - q[rollout]) * noise.ramp * (j + 1) / steps_here
    recovers = nrng.random(total) < noise.recover_prob
    p_broken = np.where(recovers, nrng.uniform(*noise.recover_range, total), 0.0)
    p = np.where(j < f, p_clean, p_broken)
    p = np.where(final, np.where(truth, noise.final_right_success, 0.0), p)
    mc_correct = nrng.binomial(MC_TOTAL, p).astype(np.int64)
    targets = _word_targets(nrng, total, shape.words_per_step, noise.words_spread)

    # text
    steps: list[list[str]] = []
    truth_list, neutral_list, final_list, target_list = (
        truth.tolist(),
        neutral.tolist(),
        final.tolist(),
        targets.tolist(),
    )
    question_list, offset_list = question_of.tolist(), offsets.tolist()
    for i in range(n):
        question = questions[question_list[i]]
        scene_set = scenes[question_list[i]]
        texts = []
        for k in range(offset_list[i], offset_list[i + 1]):
            if final_list[k]:
                stated = question.answer if truth_list[k] else _pick(prng, question.wrong_answers)
                texts.append(final_step(stated, target_list[k], prng))
            elif neutral_list[k]:
                texts.append(neutral_step(question, target_list[k], prng))
            else:
                texts.append(body_step(_claim_for(scene_set, truth_list[k], prng), target_list[k], prng))
        steps.append(texts)
    return SimulatedSource(source, scenes, questions, question_of, steps, truth, neutral, mc_correct, offsets)


# ---------------------------------------------------------------------------------------------------
# Writing VisualPRM400K-v1.1-Raw
# ---------------------------------------------------------------------------------------------------

RAW_DIR = "VisualPRM400K-v1.1-Raw"


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


def _write_source(job: tuple[str, int, int, str, bool]) -> dict[str, int]:
    """Simulate and write one annotation file (and its images). Runs in a worker process for big corpora."""
    source, n_rollouts, seed, out_dir, images = job
    out = Path(out_dir)
    sim = simulate_source(source, n_rollouts, seed)
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
    (out / "annotations" / f"{source}.jsonl").write_bytes(b"\n".join(lines) + b"\n" if lines else b"")
    n_images = sum(len(s) for s in sim.scenes) if images else 0
    return {
        "rollouts": n_rollouts,
        "steps": int(sim.offsets[-1]),
        "incorrect_steps": int((~sim.truth).sum()),
        "mc_zero_steps": int((sim.mc_correct == 0).sum()),
        "images": n_images,
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
    words_per_step: float = 26.0
    error_prob: float = 0.68  # P(a trace has an error)
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
    n_traces: int, seed: int = 0, shape: BenchmarkShape = BENCHMARK
) -> list[BenchmarkRecord]:
    """Draw benchmark traces: labels are the truth of each claim (1 / -1), restatements are 0 (neutral)."""
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
        first_error = int(nrng.integers(0, n_steps)) if prng.random() < shape.error_prob else n_steps
        targets = _word_targets(nrng, n_steps, shape.words_per_step, NOISE.words_spread).tolist()
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
                steps.append(neutral_step(question, targets[j], prng))
                labels.append(0)
                continue
            if final:
                stated = question.answer if truth else _pick(prng, question.wrong_answers)
                steps.append(final_step(stated, targets[j], prng))
            else:
                steps.append(body_step(_claim_for(scene_set, truth, prng), targets[j], prng))
            labels.append(1 if truth else -1)
        policy = _pick(prng, POLICY_MODELS)
        records.append(
            BenchmarkRecord(source, policy, scene_set, text, question.answer, steps, labels, i in missing)
        )
    return records


def _write_benchmark(out: Path, n_traces: int, seed: int, images: bool) -> dict[str, object]:
    root = out / BENCHMARK_DIR
    root.mkdir(parents=True, exist_ok=True)
    records = simulate_benchmark(n_traces, seed)
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
    (root / "test.jsonl").write_bytes(b"\n".join(lines) + b"\n" if lines else b"")
    labels = Counter(label for record in records for label in record.labels)
    return {
        "traces": n_traces,
        "steps": sum(labels.values()),
        "labels": {"correct": labels[1], "incorrect": labels[-1], "neutral": labels[0]},
        "images": n_images,
    }


# ---------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------

PARALLEL_FROM = 50_000  # below this, starting worker processes costs more than it saves


def write_synthetic(
    out_dir: str | Path,
    *,
    rollouts: int = 2000,
    benchmark_traces: int = 300,
    seed: int = 0,
    images: bool = True,
    workers: int | None = None,
) -> dict:
    """Write the synthetic VisualPRM400K-v1.1-Raw and VisualProcessBench under `out_dir`; return a summary.

    The bytes written depend only on the arguments (each source has its own seed stream), whatever
    `workers` is. `workers` defaults to 2 processes for corpora of 50,000 rollouts or more. Pictures of
    an earlier run in the world's own picture folders are removed first.
    """
    if rollouts < 0 or benchmark_traces < 0:
        raise MPRMError(f"rollouts and benchmark_traces must be >= 0 (got {rollouts}, {benchmark_traces})")
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
        (name, count, seed, str(out), images)
        for name, count in sorted(allocation.items(), key=lambda item: (-item[1], item[0]))
    ]
    if workers is None:
        workers = 2 if rollouts >= PARALLEL_FROM else 1
    per_source: dict[str, dict[str, int]] = {}
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
    benchmark = _write_benchmark(out, benchmark_traces, seed, images)
    totals = {
        key: sum(stats[key] for stats in per_source.values()) for key in next(iter(per_source.values()))
    }
    return {
        "out_dir": str(out),
        "seed": seed,
        "sources": len(per_source),
        **totals,
        "per_source": {name: per_source[name]["rollouts"] for name in sorted(per_source)},
        "benchmark": benchmark,
    }


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mprm-hf synth",
        description="Write a synthetic VisualPRM400K-v1.1-Raw corpus and VisualProcessBench in the real layouts.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--rollouts",
        type=int,
        default=2000,
        metavar="N",
        help=f"rollouts in all, split over the 38 sources (default 2000; real: {FULL_SIZE_ROLLOUTS:,})",
    )
    parser.add_argument(
        "--benchmark-traces",
        type=int,
        default=300,
        metavar="N",
        help="VisualProcessBench records (default 300)",
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
    args = parser.parse_args(argv)
    started = time.perf_counter()
    summary = write_synthetic(
        args.out,
        rollouts=args.rollouts,
        benchmark_traces=args.benchmark_traces,
        seed=args.seed,
        images=not args.no_images,
        workers=args.workers,
    )
    bench = summary["benchmark"]
    steps = max(summary["steps"], 1)
    print(
        f"wrote {summary['rollouts']:,} rollouts ({summary['steps']:,} steps, "
        f"{summary['incorrect_steps'] / steps:.1%} incorrect, {summary['mc_zero_steps'] / steps:.1%} with MC = 0) "
        f"in {summary['sources']} sources to {args.out / 'annotations'}\n"
        f"wrote {bench['traces']:,} VisualProcessBench traces ({bench['steps']:,} steps: "
        f"{bench['labels']['correct']:,} correct, {bench['labels']['incorrect']:,} incorrect, "
        f"{bench['labels']['neutral']:,} neutral) to {args.out / BENCHMARK_DIR / 'test.jsonl'}\n"
        f"images: {summary['images'] + bench['images']:,}; {time.perf_counter() - started:.1f} s"
    )
    return 0
