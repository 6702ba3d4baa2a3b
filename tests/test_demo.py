"""The Gradio demo: its pieces, the Space folder, and a real browser that fills the form and reads back
the same rewards `score_steps` gives."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from huggingface_hub import RepoCard

from mprm_hf import demo

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def test_steps_are_blank_line_separated_paragraphs() -> None:
    text = "\n  First step,\nstill the first.\n\n\nSecond step.\n \t\nThird step.  \n\n"
    assert demo.split_steps(text) == ["First step,\nstill the first.", "Second step.", "Third step."]
    assert demo.split_steps(" \n\n ") == []


def test_reward_views_agree_with_the_rewards() -> None:
    highlighted, table, bars = demo.reward_views(["a", "b"], [0.25, 0.875])
    assert highlighted == [
        ("Step 1 (0.250): a", "likely wrong"),
        ("\n", None),
        ("Step 2 (0.875): b", "likely correct"),
    ]
    assert table.to_dict("list") == {
        "step": ["1", "2"],
        "reward": ["0.250000", "0.875000"],
        "text": ["a", "b"],
    }
    assert bars.to_dict("list") == {
        "step": ["1", "2"],
        "reward": [0.25, 0.875],
        "verdict": ["likely wrong", "likely correct"],
    }
    assert demo.verdict(0.5) == "likely correct"  # the metric's rule: correct iff reward >= threshold


def test_space_folder_has_a_valid_header_and_stages_with_the_package(tmp_path: Path) -> None:
    header = RepoCard.load(REPO_ROOT / "spaces_demo" / "README.md").data.to_dict()
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py"
    assert (REPO_ROOT / "spaces_demo" / header["app_file"]).is_file()
    assert len(header["short_description"]) <= 60
    staged = demo.stage_space(tmp_path / "space")
    assert {"README.md", "app.py", "requirements.txt", "mprm_hf"} <= {p.name for p in staged.iterdir()}
    assert (staged / "mprm_hf" / "demo.py").is_file() and not list(staged.rglob("__pycache__"))
    assert RepoCard.load(staged / "README.md").data.to_dict() == header


def test_model_path_falls_back_from_flag_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPRM_MODEL", "someone/trained-prm")
    assert demo.resolve_model_path("local/folder") == "local/folder"
    assert demo.resolve_model_path() == "someone/trained-prm"


def test_model_path_prefers_the_demo_trained_prm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MPRM_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    trained = (
        tmp_path / demo.DEMO_TRAINED_MODEL
    )  # where `make demo` (mprm-hf quickstart) leaves BIS-10%'s PRM
    trained.mkdir(parents=True)
    (trained / "config.json").write_text("{}")
    assert demo.resolve_model_path() == str(demo.DEMO_TRAINED_MODEL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)")
def test_browser_shows_the_rewards_of_score_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from mprm_hf.modeling import load_model_and_processor
    from mprm_hf.scoring import score_steps

    model, processor = load_model_and_processor(tiny_model_dir)
    examples = demo.synthetic_examples(tmp_path / "examples", n_examples=2)
    image_path, question, steps_text, _ = examples[0]
    steps = demo.split_steps(steps_text)[:5]  # a short trace keeps the test fast
    app = demo.build_app(model, processor, model_name=str(tiny_model_dir), examples=examples)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.locator("#image input[type=file]").set_input_files(image_path)
            page.locator("#question textarea").fill(question)
            page.locator("#steps textarea").fill("\n\n".join(steps))
            page.locator("#step-format").get_by_label("visualprm").check()
            page.locator("#score").click()
            cells = page.locator("#rewards").get_by_role("gridcell")  # step, reward, text per row
            expect(cells).to_have_count(3 * len(steps), timeout=120_000)
            shown = [float(text) for text in cells.all_inner_texts()[1::3]]
            expect(page.locator("#highlighted")).to_contain_text("Step 1 (")
            page.locator("#bars").scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    expected = score_steps(
        model, processor, [Image.open(image_path).convert("RGB")], question, steps, step_format="visualprm"
    )
    assert shown == pytest.approx(expected, abs=1e-6)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
