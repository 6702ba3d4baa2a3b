"""The Gradio demo: its pieces, the Space folder, a real browser that uses the page as a person would and
reads back the rewards `score_steps` gives, one check per kind of bad input, and a real server under
concurrent load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import RepoCard

from mprm_hf import embedded, space
from mprm_hf.errors import MPRMError
from mprm_hf.rerank import aggregate_rewards
from mprm_hf.step_format import split_steps

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)"
)
CALIBRATED = 0.45  # written into the served model's card, so the slider must start there
TIMEOUT_MS = 90_000


def test_steps_are_blank_line_separated_paragraphs() -> None:
    text = "\n  First step,\nstill the first.\n\n\nSecond step.\n \t\nThird step.  \n\n"
    assert split_steps(text) == ["First step,\nstill the first.", "Second step.", "Third step."]
    assert split_steps(" \n\n ") == []


def test_views_mark_the_first_error_the_aggregate_and_the_human_agreement() -> None:
    scored = space.Scored(steps=["a", "b <i>", "c"], rewards=[[0.8, 0.25, 0.6]], labels=[1, -1, 0])
    assert space.first_error(scored.rewards[0], 0.5) == 2 and space.first_error([0.9], 0.5) is None
    assert space.verdict(0.5, 0.5) == "likely correct"  # the metric's rule: correct iff reward >= threshold
    assert space.agreement(scored.rewards[0], scored.labels, 0.5) == (2, 2)  # neutral steps left out
    table = space.reward_table(scored, ["m"], 0.5)
    assert table.count('class="prm-row') == 3 and "b &lt;i&gt;" in table  # step text is escaped
    assert 'id="step-2" class="prm-row prm-wrong" data-reward="0.25"' in table
    assert table.count("first likely error") == 1 and "Human label" in table
    for how in space.AGGREGATES:
        html = space.summary(scored, ["m"], 0.5, how)
        assert f'data-value="{aggregate_rewards(scored.rewards[0], how)!r}"' in html
        assert 'id="first-error" data-step="2"' in html and 'data-agree="2" data-labelled="2"' in html
    plot = space.bars(scored.rewards[0], 0.7)
    assert plot.to_dict("list")["verdict"] == ["likely correct", "likely wrong", "likely wrong"]


def test_two_prms_side_by_side_and_a_cut_trace() -> None:
    scored = space.Scored(steps=["a", "b", "c"], rewards=[[0.9, 0.2, 0.7], [0.8, 0.6]])
    table = space.reward_table(scored, ["A", "B"], 0.5)
    assert "Reward A" in table and "Reward B" in table and table.count("not scored") == 1
    assert 'data-reward="0.2" data-reward2="0.6"' in table
    html = space.summary(scored, ["A", "B"], 0.5, "mean")
    assert 'id="disagreement" data-steps="2"' in html and "over the 2 scored steps" in html


def test_human_labels_parse_in_the_benchmark_values() -> None:
    assert space.parse_labels("1 1 -1 0") == [1, 1, -1, 0]
    assert space.parse_labels("+, -, neutral") == [1, -1, 0]
    assert space.parse_labels("  ") == []
    with pytest.raises(MPRMError, match="'2' is not one of"):
        space.parse_labels("1 2")


def test_calibrated_threshold_comes_from_the_card_then_the_config(tmp_path: Path) -> None:
    folder = tmp_path / "prm"
    folder.mkdir()
    assert space.calibrated_threshold(folder) is None
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "prm_threshold": 0.625}))
    assert space.calibrated_threshold(folder) == 0.625
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nprm_threshold: 0.375\n---\n# A PRM\n")
    assert space.calibrated_threshold(folder) == 0.375  # the card wins over the config
    (folder / "README.md").write_text("---\nprm_threshold: high\n---\n")
    with pytest.raises(MPRMError, match="prm_threshold must be a number between 0 and 1"):
        space.calibrated_threshold(folder)
    assert space.calibrated_threshold("nobody/no-such-prm") is None  # offline: the default stands


def test_untrained_models_get_a_warning(tiny_model_dir: Path) -> None:
    from mprm_hf.modeling import load_model_and_processor

    model, _ = load_model_and_processor(tiny_model_dir)
    assert "never trained as a PRM" in space.model_warning(model, str(tiny_model_dir))
    assert "tiny base model" in space.model_warning(model, str(embedded.TINY_BASE))
    model.config.prm_step_format = "prm-token"  # what training records in a PRM's config
    assert space.model_warning(model, str(tiny_model_dir)) is None


def test_traces_are_read_by_the_project_loaders(tmp_path: Path) -> None:
    bench = json.loads((FIXTURES / "visualprocessbench_real_12" / "test.jsonl").read_text().splitlines()[1])
    (tmp_path / "bench.json").write_text(json.dumps({**bench, "image": ["images/x.png"]}))
    trace = space.read_trace(tmp_path / "bench.json")
    assert trace.steps == bench["response"]["steps"]
    assert trace.labels == bench["response"]["process_correctness"]
    assert "VisualProcessBench" in trace.note and trace.images == ["x.png"]  # named, never opened
    (tmp_path / "outside.json").write_text(json.dumps({**bench, "image": ["../../etc/passwd"]}))
    with pytest.raises(MPRMError, match=r"outside.json:1: field 'image\[0\]': image path outside"):
        space.read_trace(tmp_path / "outside.json")
    rows = [
        {"prompt": "Q?", "completions": ["s1", "s2"], "labels": [True, False], "images": ["a/b.png"]},
        {"prompt": "R?", "completions": ["t1"], "labels": [True]},
    ]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    trace = space.read_trace(tmp_path / "steps.jsonl")
    assert (trace.question, trace.steps, trace.labels, trace.images) == (
        "Q?",
        ["s1", "s2"],
        [1, -1],
        ["b.png"],
    )
    assert "the first of 2 records" in trace.note and "upload them under Images" in trace.note
    (tmp_path / "broken.json").write_text('{"prompt": "Q", "completions": [')
    with pytest.raises(MPRMError, match=r"broken.json: not valid JSON \(line 1"):
        space.read_trace(tmp_path / "broken.json")
    (tmp_path / "nosteps.json").write_text(json.dumps({"response": {"steps": [], "process_correctness": []}}))
    with pytest.raises(MPRMError, match="nosteps.json: no usable record") as error:
        space.read_trace(tmp_path / "nosteps.json")
    assert str(tmp_path) not in str(error.value).replace(str(tmp_path / "nosteps.json"), "")


def test_space_folder_has_a_valid_header_and_stages_with_the_package(tmp_path: Path) -> None:
    header = RepoCard.load(REPO_ROOT / "spaces_demo" / "README.md").data.to_dict()
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py"
    assert (REPO_ROOT / "spaces_demo" / header["app_file"]).is_file()
    assert len(header["short_description"]) <= 60
    staged = space.stage_space(tmp_path / "space")
    assert {"README.md", "app.py", "requirements.txt", "mprm_hf", "examples"} <= {
        p.name for p in staged.iterdir()
    }
    assert (staged / "mprm_hf" / "space.py").is_file() and not list(staged.rglob("__pycache__"))
    assert (staged / "examples" / "VisualProcessBench" / "test.jsonl").is_file()
    assert RepoCard.load(staged / "README.md").data.to_dict() == header


def test_model_path_falls_back_from_flag_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPRM_MODEL", "someone/trained-prm")
    assert space.resolve_model_path("local/folder") == "local/folder"
    assert space.resolve_model_path() == "someone/trained-prm"


def test_model_path_prefers_the_demo_trained_prm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MPRM_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    trained = (
        tmp_path / embedded.trained_model()
    )  # where `make demo` (mprm-hf quickstart) leaves BIS-10%'s PRM
    trained.mkdir(parents=True)
    (trained / "config.json").write_text("{}")
    assert space.resolve_model_path() == str(embedded.trained_model())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    url: str
    prm: space.Prm
    root: Path


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One page for the module: the untrained tiny model, with a calibrated threshold in its card."""
    root = tmp_path_factory.mktemp("page")
    model_dir = Path(shutil.copytree(tiny_model_dir, root / "prm"))
    (model_dir / "README.md").write_text(f"---\nprm_threshold: {CALIBRATED}\n---\n# The tiny PRM\n")
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "uploads")  # this worker's uploads, apart from the other's
    prm = space.load_prm(model_dir)
    examples = root / "examples"
    app = space.build_app(
        [prm], examples=space.synthetic_examples(examples, n_examples=2), real=space.real_examples(examples)
    )
    port = _free_port()
    space.launch(app, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Served(f"http://127.0.0.1:{port}/", prm, root)
    finally:
        app.close()
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium context for the module: pages share its HTTP cache, so each loads the app quickly."""
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield launched.new_context(viewport={"width": 1400, "height": 1100})
    finally:
        launched.close()
        playwright.stop()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    page = browser.new_page()
    page.goto(served.url, wait_until="domcontentloaded")
    page.locator("#score").wait_for(timeout=TIMEOUT_MS)
    try:
        yield page
    finally:
        page.close()


def _image(path: Path, size: tuple[int, int] = (48, 40)) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((4, 4, size[0] // 2, size[1] // 2), fill="blue")
    image.save(path)
    return path


def _fill(
    page: Any, *, files: list[Path] = (), question: str = "", steps: str = "", labels: str = ""
) -> None:
    from playwright.sync_api import expect

    if files:
        page.locator("#images input[type=file]").set_input_files([str(path) for path in files])
        for path in files:
            expect(page.locator("#images")).to_contain_text(path.stem, timeout=TIMEOUT_MS)
    page.locator("#question textarea").fill(question)
    page.locator("#steps textarea").fill(steps)
    if labels:
        page.locator("#labels textarea").fill(labels)


def _score(page: Any) -> str:
    """Press Score and return the page's message once the answer came (the rewards, or why none)."""
    from playwright.sync_api import expect

    page.locator("#score").click()
    done = page.locator("#step-1").or_(page.locator("#message", has_text="Not scored"))
    expect(done.first).to_be_visible(timeout=TIMEOUT_MS)
    return page.locator("#message").inner_text()


def _rewards(page: Any, suffix: str = "") -> list[float]:
    rows = page.locator(f"#rewards tr.prm-row[data-reward{suffix}]")
    return [float(value) for value in rows.evaluate_all(f"rs => rs.map(r => r.dataset.reward{suffix})")]


QUESTION = "How many shapes are in the image?"
STEPS = [
    "The grid has four cells, so we look at each of them in turn.",
    "The top left cell holds a blue circle.",
    "The bottom right cell holds a red diamond, so the figure shows two shapes.",
    "So the answer is 2.",
]


@pytest.mark.slow
@needs_chromium
def test_page_shows_the_rewards_first_error_and_aggregate_of_score_steps(
    page: Any, served: Served, tmp_path: Path
) -> None:
    from PIL import Image
    from playwright.sync_api import expect

    from mprm_hf.scoring import score_steps

    expect(page.locator("#banner")).to_contain_text("never trained as a PRM")
    number = page.locator("#threshold input[type=number]")
    assert float(number.input_value()) == CALIBRATED  # the card's calibrated threshold
    image = _image(tmp_path / "shapes.png")
    _fill(page, files=[image], question=QUESTION, steps="\n\n".join(STEPS))
    page.locator("#step-format").get_by_label("visualprm").check()
    page.locator("#aggregate-rule").get_by_label("min").check()
    message = _score(page)
    expected = score_steps(
        served.prm.model, served.prm.processor, [Image.open(image)], QUESTION, STEPS, step_format="visualprm"
    )
    assert _rewards(page) == pytest.approx(expected, abs=1e-6)
    assert "No image" not in message and "Not scored" not in message
    for cut in (sorted(expected)[1] + 1e-4, CALIBRATED):  # between two rewards, then back
        number.fill(f"{cut:.4f}")
        number.press("Enter")
        cut = float(number.input_value())
        first = next((n for n, r in enumerate(expected, start=1) if r < cut), None)
        expect(page.locator("#first-error")).to_have_attribute("data-step", str(first or ""))
        wrong = page.locator("#rewards tr.prm-wrong")
        expect(wrong).to_have_count(sum(r < cut for r in expected))
        if first:
            expect(page.locator(f"#step-{first}")).to_contain_text("first likely error")
    aggregate = float(page.locator("#aggregate").get_attribute("data-value"))
    assert aggregate == pytest.approx(aggregate_rewards(expected, "min"), abs=1e-9)
    expect(page.locator("#aggregate")).to_contain_text("the lowest step reward")
    page.locator("#aggregate-rule").get_by_label("product").check()
    expect(page.locator("#aggregate")).to_have_attribute("data-rule", "product")
    value = float(page.locator("#aggregate").get_attribute("data-value"))
    assert value == pytest.approx(aggregate_rewards(expected, "product"), abs=1e-9)
    page.locator("#bars").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "space.png"), full_page=True)
    assert (tmp_path / "space.png").stat().st_size > 10_000


@pytest.mark.slow
@needs_chromium
def test_real_example_shows_its_human_labels_beside_the_verdicts(page: Any, served: Served) -> None:
    from playwright.sync_api import expect

    record = json.loads(
        (REPO_ROOT / "spaces_demo/examples/VisualProcessBench/test.jsonl").read_text().splitlines()[0]
    )
    page.get_by_text("Real VisualProcessBench records").scroll_into_view_if_needed()
    page.locator(".gallery-item, tbody tr", has_text=record["question"][:30]).first.click()
    expect(page.locator("#labels textarea")).to_have_value(
        space.format_labels(record["response"]["process_correctness"])
    )
    _score(page)
    labels = record["response"]["process_correctness"]
    rewards = _rewards(page)
    cells = page.locator("#rewards tr.prm-row td.prm-label").all_inner_texts()
    assert cells == [space.HUMAN_LABELS[label] for label in labels]
    agree, labelled = space.agreement(rewards, labels, CALIBRATED)
    expect(page.locator("#agreement")).to_contain_text(f"{agree} of {labelled}")


@pytest.mark.slow
@needs_chromium
def test_uploaded_trace_fills_the_form(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    trace = {
        "prompt": QUESTION,
        "completions": STEPS[:2],
        "labels": [True, False],
        "images": ["x/shapes.png"],
    }
    (tmp_path / "trace.json").write_text(json.dumps(trace))
    page.locator("#trace-file input[type=file]").set_input_files(str(tmp_path / "trace.json"))
    expect(page.locator("#message")).to_contain_text(
        "Read a stepwise trace from trace.json.", timeout=TIMEOUT_MS
    )
    expect(page.locator("#message")).to_contain_text("shapes.png")
    expect(page.locator("#steps textarea")).to_have_value("\n\n".join(STEPS[:2]))
    expect(page.locator("#labels textarea")).to_have_value("1 -1")
    _score(page)
    expect(page.locator("#rewards tr.prm-row")).to_have_count(2)


def _message_after(page: Any, **form: Any) -> str:
    _fill(page, **form)
    return _score(page)


@pytest.mark.slow
@needs_chromium
def test_no_image_scores_the_text_and_says_so(page: Any) -> None:
    message = _message_after(page, question=QUESTION, steps="\n\n".join(STEPS))
    assert "No image: the steps were scored on the text alone." in message
    assert len(_rewards(page)) == len(STEPS)


@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("name", ["fake.png", "notes.txt"])
def test_a_file_that_is_not_an_image_is_named_in_the_page(page: Any, tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("this is not an image\n")
    message = _message_after(page, files=[tmp_path / name], question=QUESTION, steps=STEPS[0])
    assert f"Not scored. {name} is not an image" in message
    assert str(tmp_path) not in message and "Error" not in message
    assert page.locator("#rewards tr.prm-row").count() == 0


@pytest.mark.slow
@needs_chromium
def test_a_file_over_the_size_limit_is_refused(page: Any, served: Served, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    big = tmp_path / "big.png"
    with big.open("wb") as handle:  # sparse: 21 MB on paper, nothing on disk
        handle.truncate(21 * 1024 * 1024)
    page.locator("#images input[type=file]").set_input_files(str(big))
    expect(page.locator("#upload-limits")).to_contain_text(f"at most {space.MAX_FILE_SIZE_MB} MB per file")
    told = page.get_by_text(f'exceed the maximum allowed size of {space.MAX_FILE_SIZE_MB}.0 Mb: "big.png"')
    expect(told.first).to_be_visible(timeout=TIMEOUT_MS)  # Gradio's notice, before any byte is stored
    expect(page.locator("#images").get_by_text("Error", exact=True)).to_be_hidden()  # no bare badge
    page.screenshot(path=str(tmp_path / "too-large.png"))
    assert not any(path.name == "big.png" for path in served.root.joinpath("uploads").rglob("*"))


@pytest.mark.slow
@needs_chromium
def test_too_many_pixels_are_refused(page: Any, tmp_path: Path) -> None:
    from PIL import Image

    huge = tmp_path / "huge.png"
    Image.new("1", (12_000, 12_000)).save(huge)  # a few KB on disk, 144 million pixels
    message = _message_after(page, files=[huge], question=QUESTION, steps=STEPS[0])
    assert "Not scored. huge.png is 12000 x 12000 pixels, over the limit of 36,000,000" in message


@pytest.mark.slow
@needs_chromium
def test_a_large_image_is_downscaled_to_the_processor_maximum(page: Any, tmp_path: Path) -> None:
    large = _image(tmp_path / "large.png", (300, 200))
    message = _message_after(page, files=[large], question=QUESTION, steps=STEPS[0])
    assert "large.png (300 x 200 pixels) was downscaled to" in message and "processor maximum" in message
    assert len(_rewards(page)) == 1


@pytest.mark.slow
@needs_chromium
def test_no_steps_is_told(page: Any) -> None:
    message = _message_after(page, question=QUESTION, steps="  \n\n ")
    assert "Not scored. No steps" in message


@pytest.mark.slow
@needs_chromium
def test_malformed_trace_json_is_told(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    (tmp_path / "trace.json").write_text('{"prompt": "Q", "completions": ["a",')
    page.locator("#trace-file input[type=file]").set_input_files(str(tmp_path / "trace.json"))
    expect(page.locator("#message")).to_contain_text(
        "Trace not read. trace.json: not valid JSON (line 1", timeout=TIMEOUT_MS
    )


@pytest.mark.slow
@needs_chromium
def test_a_trace_longer_than_the_model_reads_says_which_steps_were_scored(page: Any, served: Served) -> None:
    from mprm_hf.scoring import context_length

    steps = [f"Step {n} counts the cells of the grid again, one by one, " * 8 for n in range(1, 61)]
    assert sum(map(len, steps)) > 25_000
    message = _message_after(page, question=QUESTION, steps="\n\n".join(steps))
    scored = len(_rewards(page))
    assert 0 < scored < len(steps)
    assert f"longer than {served.prm.name} reads ({context_length(served.prm.model):,} tokens)" in message
    assert f"steps 1-{scored} of {len(steps)} were scored" in message


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


@pytest.mark.slow
def test_server_under_concurrent_load_levels_off_and_removes_its_uploads(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`mprm-hf demo --model A --model2 B` as a real process: batches of 50 concurrent score requests
    through gradio_client all succeed, show both PRMs, and the server's memory stops growing; a path on
    the server is refused; after shutdown no upload is left behind."""
    from gradio_client import Client, handle_file

    from mprm_hf.modeling import build_tiny_model

    second = build_tiny_model(tmp_path / "prm-b", seed=1)
    uploads = tmp_path / "uploads"
    port = _free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads), "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("MPRM_MODEL2", None)
    command = [sys.executable, "-m", "mprm_hf.cli", "demo", "--model", str(tiny_model_dir)]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [*command, "--model2", str(second), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                time.sleep(0.2)
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        steps = "\n\n".join(STEPS)
        image = handle_file(str(_image(tmp_path / "shapes.png")))
        message, summary, table, *_ = client.predict(
            [image], QUESTION, steps, "", "prm-token", 0.5, "mean", api_name="/score"
        )
        assert "No image" not in message and "Not scored" not in message
        assert 'id="disagreement"' in summary and table.count("data-reward2=") == len(STEPS)  # both PRMs

        def batch() -> list[tuple]:
            jobs = [
                client.submit(None, QUESTION, steps, "", "prm-token", 0.5, "mean", api_name="/score")
                for _ in range(50)
            ]
            return [job.result(timeout=300) for job in jobs]

        rss = []
        for _ in range(3):  # a warm-up batch, then two measured ones
            for message, _, table, *_ in batch():
                assert message == "No image: the steps were scored on the text alone."
                assert table.count("data-reward2=") == len(STEPS)
            rss.append(_rss(server.pid))
        growth = [(after - before) / 2**20 for before, after in zip(rss, rss[1:], strict=False)]
        print(f"server RSS after each batch of 50 (MiB): {[round(r / 2**20, 1) for r in rss]}")
        assert max(growth) < 25, growth  # MiB per 50 requests; it grew without bound before
        server_file = {"path": str(tmp_path / "server.log"), "meta": {"_type": "gradio.FileData"}}
        call = f"{url}gradio_api/call/score"
        data = json.dumps({"data": [[server_file], QUESTION, steps, "", "prm-token", 0.5, "mean"]}).encode()
        request = urllib.request.Request(call, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            event = json.loads(answer.read())["event_id"]
        with urllib.request.urlopen(f"{call}/{event}", timeout=60) as answer:
            assert answer.read().decode().startswith("event: error")  # a file it did not receive as an upload
    finally:
        server.send_signal(signal.SIGTERM)  # a Space stopping; handled as Ctrl-C
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    left = [path for path in uploads.rglob("*") if path.is_file()] if uploads.exists() else []
    assert not left, left
