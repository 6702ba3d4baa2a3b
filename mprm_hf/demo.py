"""The Gradio demo: the reward a process reward model gives every step of a reasoning trace about an image.

One app serves both `mprm-hf demo` on a laptop and the Hugging Face Space in `spaces_demo/`. The model
comes from `--model`, else `$MPRM_MODEL` (a folder or a Hub id), else the PRM that `make demo` trains
(BIS-10%'s, under `outputs/quickstart`), else the untrained embedded tiny model, built offline on first use so that the demo
always starts, even without a trained checkpoint.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mprm_hf.quickstart import trained_model

EMBEDDED_DIR = Path("embedded")
EMBEDDED_MODEL = EMBEDDED_DIR / "tiny-qwen2-vl"
DEMO_TRAINED_MODEL = trained_model()  # BIS-10%'s PRM, which `make demo` (mprm-hf quickstart) trains
EXAMPLES_DIR = EMBEDDED_DIR / "demo-examples"
STEP_FORMATS = ("prm-token", "visualprm")
N_EXAMPLES = 4
SPACE_DIR = Path(__file__).resolve().parent.parent / "spaces_demo"
THRESHOLD = 0.5  # the VisualProcessBench metric's default: a step is predicted correct iff reward >= 0.5
LIKELY_CORRECT, LIKELY_WRONG = "likely correct", "likely wrong"
COLORS = {LIKELY_CORRECT: "#16a34a", LIKELY_WRONG: "#dc2626"}


def split_steps(text: str) -> list[str]:
    """Steps are paragraphs: a blank line ends a step, so one step may span several lines."""
    return [step.strip() for step in re.split(r"\n\s*\n", text.strip()) if step.strip()]


def resolve_model_path(model: str | os.PathLike[str] | None = None) -> str:
    """`model`, else `$MPRM_MODEL`, else `make demo`'s trained PRM, else the embedded tiny model."""
    chosen = model or os.environ.get("MPRM_MODEL")
    if chosen:
        return str(chosen)
    if (DEMO_TRAINED_MODEL / "config.json").is_file():
        return str(DEMO_TRAINED_MODEL)
    if not (EMBEDDED_MODEL / "config.json").is_file():
        from mprm_hf.modeling import build_tiny_model

        build_tiny_model(EMBEDDED_MODEL, arch="qwen2_vl", seed=0)
    return str(EMBEDDED_MODEL)


def synthetic_examples(folder: Path = EXAMPLES_DIR, n_examples: int = N_EXAMPLES) -> list[list[Any]]:
    """A few benchmark traces of the synthetic world (image, question, steps), written on first use."""
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
        [
            row["images"][0] if row["images"] else None,
            row["question"],
            "\n\n".join(row["steps"]),
            STEP_FORMATS[0],
        ]
        for row in traces.select(range(min(n_examples, len(traces))))
    ]


def verdict(reward: float) -> str:
    """The two classes the benchmark metric predicts, at its default threshold."""
    return LIKELY_CORRECT if reward >= THRESHOLD else LIKELY_WRONG


def reward_views(steps: Sequence[str], rewards: Sequence[float]) -> tuple[list, Any, Any]:
    """The three views of one scored trace: highlighted steps, a table, and the data of a bar plot."""
    import pandas as pd

    highlighted: list[tuple[str, str | None]] = []
    for index, (step, reward) in enumerate(zip(steps, rewards, strict=True), start=1):
        highlighted += [(f"Step {index} ({reward:.3f}): {step}", verdict(reward)), ("\n", None)]
    numbers = [str(index) for index in range(1, len(steps) + 1)]
    table = pd.DataFrame(
        {"step": numbers, "reward": [f"{reward:.6f}" for reward in rewards], "text": list(steps)}
    )
    bars = pd.DataFrame({"step": numbers, "reward": list(rewards), "verdict": [verdict(r) for r in rewards]})
    return highlighted[:-1], table, bars


def build_app(model: Any, processor: Any, *, model_name: str, examples: Sequence[Sequence[Any]] = ()) -> Any:
    """The `gr.Blocks` UI around an already loaded model: form on the left, rewards on the right."""
    import gradio as gr

    from mprm_hf.errors import MPRMError
    from mprm_hf.scoring import score_steps

    def score(image: Any, question: str, steps_text: str, step_format: str) -> tuple[list, Any, gr.BarPlot]:
        steps = split_steps(steps_text or "")
        if not (question or "").strip():
            raise gr.Error("Type the question the steps answer.")
        if not steps:
            raise gr.Error("Paste at least one step (separate steps with a blank line).")
        images = [image.convert("RGB")] if image is not None else []
        try:
            rewards = score_steps(model, processor, images, question.strip(), steps, step_format=step_format)
        except MPRMError as error:
            raise gr.Error(str(error)) from None
        highlighted, table, bars = reward_views(steps, rewards)
        return (
            highlighted,
            table,
            gr.BarPlot(value=bars, sort=list(bars["step"])),
        )  # step order, not "1, 10, 2"

    with gr.Blocks(title="mprm-hf: per-step rewards") as app:
        gr.Markdown(
            "# Per-step rewards of a multimodal process reward model\n"
            f"Model: `{model_name}`. Give an image, a question and a step-by-step solution: every step gets "
            "the probability, according to the model, that it is correct (green: likely correct, red: likely "
            f"wrong, at the benchmark's threshold {THRESHOLD})."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", elem_id="image", height=260)
                question = gr.Textbox(label="Question", lines=3, elem_id="question")
                steps = gr.Textbox(
                    label="Steps (separate steps with a blank line)", lines=10, elem_id="steps", max_lines=40
                )
                step_format = gr.Radio(
                    list(STEP_FORMATS),
                    value=STEP_FORMATS[0],
                    label="Step format (the one the model was trained with)",
                    elem_id="step-format",
                )
                score_button = gr.Button("Score", variant="primary", elem_id="score")
            with gr.Column():
                highlighted = gr.HighlightedText(
                    label=f"Steps (reward >= {THRESHOLD}: likely correct)",
                    color_map=COLORS,
                    show_legend=True,
                    elem_id="highlighted",
                )
                table = gr.Dataframe(
                    headers=["step", "reward", "text"],
                    label="Per-step rewards",
                    interactive=False,
                    wrap=True,
                    elem_id="rewards",
                )
                bars = gr.BarPlot(
                    x="step",
                    y="reward",
                    color="verdict",
                    color_map=COLORS,
                    y_lim=[0, 1],
                    label="Reward per step",
                    elem_id="bars",
                )
        if examples:
            gr.Examples(
                examples=[list(example) for example in examples],
                inputs=[image, question, steps, step_format],
                label="Examples from the synthetic world",
            )
        score_button.click(
            score,
            inputs=[image, question, steps, step_format],
            outputs=[highlighted, table, bars],
            api_name="score",
        )
    return app


def create_app(model: str | os.PathLike[str] | None = None, *, examples_dir: Path = EXAMPLES_DIR) -> Any:
    """Load the model (see `resolve_model_path`) and the synthetic examples, and build the app."""
    from mprm_hf.modeling import load_model_and_processor

    model_path = resolve_model_path(model)
    loaded_model, processor = load_model_and_processor(model_path)
    return build_app(
        loaded_model, processor, model_name=model_path, examples=synthetic_examples(examples_dir)
    )


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
        help="model folder or Hub id (default: $MPRM_MODEL, else outputs/tiny-cpu, else the embedded tiny model)",
    )
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
    create_app(args.model).launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0
