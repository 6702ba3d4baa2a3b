"""Cards render with valid metadata and parse back; staging is all-or-nothing; pushing goes through the
real `HfApi` code path against a local fake Hub, fails in one line offline, and never leaks a token."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard, RepoCard

from mprm_hf import hub
from mprm_hf.errors import MPRMError

FAKE_TOKEN = "hf_" + "Fake0Token1For2Tests3Only4abcdefgh"  # shaped like a real user access token

DATASET_INFO = {
    "pretty_name": "BIS 10% of VisualPRM400K",
    "command": ["mprm-hf", "select", "--method", "bis", "--alpha", "0.5", "--top-ratio", "0.1"],
    "selector": "bis",
    "selector_params": {"alpha": 0.5, "top_ratio": 0.1},
    "source_corpus": "OpenGVLab/VisualPRM400K-v1.1-Raw",
    "source_revision": "0123abcd",
    "per_source": [
        {"source": "ai2d", "kept": 120, "total": 1200},
        {"source": "geoqa", "kept": 30, "total": 300},
    ],
    "label_balance_before": {"steps": 9000, "positive": 7200, "negative": 1800, "positive_fraction": 0.8},
    "label_balance_after": {"steps": 1000, "positive": 600, "negative": 400, "positive_fraction": 0.6},
    "n_rollouts_kept": 150,
    "n_rollouts_total": 1500,
    "histogram_path": "histogram.png",
    "license": "mit",
    "tags": ["bis"],
}
METRICS = {
    "overall": 0.6123,
    "macro_f1_pooled": 0.6011,
    "f1_positive": 0.71,
    "f1_negative": 0.49,
    "auc": 0.665,
    "per_source": {
        "MMMU": {"macro_f1": 0.58, "f1_positive": 0.7, "f1_negative": 0.46, "n_steps": 300},
        "MathVerse": {"macro_f1": 0.63, "f1_positive": 0.72, "f1_negative": 0.54, "n_steps": 500},
    },
}
MODEL_INFO = {
    "model_name": "tiny-prm-bis10",
    "base_model": "Qwen/Qwen2.5-VL-7B-Instruct",
    "datasets": "someone/visualprm400k-bis10",
    "selector": "bis",
    "selector_params": {"alpha": 0.5, "top_ratio": 0.1},
    "hyperparameters": {"learning_rate": 1e-5, "num_train_epochs": 1, "lr_scheduler_type": "cosine"},
    "step_format": "prm-token",
    "command": "mprm-hf train recipes/tiny-cpu.yaml",
    "license": "apache-2.0",
}


def test_dataset_card_renders_and_parses_back(tmp_path: Path) -> None:
    card = hub.render_dataset_card(**DATASET_INFO)
    path = tmp_path / "README.md"
    card.save(path)
    data = DatasetCard.load(path).data.to_dict()
    assert data["license"] == "mit"
    assert data["pretty_name"] == DATASET_INFO["pretty_name"]
    assert {"process-reward-model", "multimodal", "mprm-hf", "bis"} <= set(data["tags"])
    assert data["size_categories"] == ["n<1K"]
    assert data["task_categories"] == ["image-text-to-text"]
    assert data["source_datasets"] == ["OpenGVLab/VisualPRM400K-v1.1-Raw"]
    text = path.read_text()
    assert "mprm-hf select --method bis --alpha 0.5 --top-ratio 0.1" in text
    assert "| ai2d | 120 | 1,200 | 10.0 |" in text
    assert "| Before selection | 9,000 | 7,200 | 1,800 | 0.800 |" in text
    assert "| After selection | 1,000 | 600 | 400 | 0.600 |" in text
    assert "![BIS, p_pos and reliability of kept and dropped rollouts](histogram.png)" in text
    assert "`0123abcd`" in text


def test_dataset_card_keeps_local_paths_out_of_metadata(tmp_path: Path) -> None:
    card = hub.render_dataset_card(
        **{**DATASET_INFO, "source_corpus": str(tmp_path), "source_revision": None}
    )
    assert "source_datasets" not in card.data.to_dict()
    assert f"`{tmp_path}`" in card.text and "not recorded (local files)" in card.text


def test_dataset_card_names_the_missing_field() -> None:
    broken = {**DATASET_INFO, "per_source": [{"source": "ai2d", "kept": 1}]}
    with pytest.raises(MPRMError, match=r"per_source\[0\]: field 'total' is missing"):
        hub.render_dataset_card(**broken)


def test_model_card_model_index_round_trip(tmp_path: Path) -> None:
    card = hub.render_model_card(**MODEL_INFO, evaluation=METRICS, evaluation_threshold=0.5)
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert loaded.data.datasets == ["someone/visualprm400k-bis10"]
    assert loaded.data.library_name == "transformers"
    assert loaded.data.license == "apache-2.0"
    assert loaded.data.model_name == "tiny-prm-bis10"
    results = {(r.dataset_config, r.metric_name): r for r in loaded.data.eval_results}
    assert len(results) == 5 + 3 * 2
    overall = results[(None, "Overall (micro average of per-source macro-F1)")]
    assert overall.metric_value == pytest.approx(0.6123)
    assert overall.dataset_type == "OpenGVLab/VisualProcessBench" and overall.dataset_split == "test"
    assert overall.metric_args == {"threshold": 0.5}
    assert results[(None, "ROC-AUC")].metric_args is None
    assert results[("MathVerse", "Macro-F1, MathVerse")].metric_value == pytest.approx(0.63)
    assert "| MMMU | 0.5800 | 0.7000 | 0.4600 | 300 |" in path.read_text()


def test_model_card_without_evaluation_and_with_local_paths(tmp_path: Path) -> None:
    local = {**MODEL_INFO, "base_model": str(tmp_path), "datasets": [str(tmp_path / "subset")]}
    card = hub.render_model_card(**local)
    data = card.data.to_dict()
    assert "model-index" not in data and "base_model" not in data
    assert "datasets" not in data
    assert f"`{tmp_path / 'subset'}`" in card.text and "## Evaluation" not in card.text


# -- secrets ------------------------------------------------------------------------------------
def test_card_with_the_environment_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "a-private-token-value-1234"
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(MPRMError, match="contains a Hugging Face access token") as error:
        hub.render_dataset_card(**{**DATASET_INFO, "command": f"mprm-hf select --token {secret}"})
    assert secret not in str(error.value)


def test_token_shaped_text_and_token_in_a_staged_file_are_refused(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(MPRMError, match="model card: contains"):
        hub.render_model_card(**{**MODEL_INFO, "hyperparameters": {"hub_token": FAKE_TOKEN}})
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    card = hub.render_model_card(**MODEL_INFO)
    pickled_args = b"\x80\x04junk" + FAKE_TOKEN.encode() + b"more"
    with pytest.raises(MPRMError, match="training_args.bin: contains"):
        hub.stage_folder(tmp_path / "model", card, files={"training_args.bin": pickled_args})
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing staged, no leftovers


# -- staging ------------------------------------------------------------------------------------
def test_stage_folder_is_complete_or_absent(tmp_path: Path) -> None:
    card = hub.render_dataset_card(**DATASET_INFO)
    source = tmp_path / "histogram-source.png"
    source.write_bytes(b"\x89PNG fake")
    out = hub.stage_folder(
        tmp_path / "subset",
        card,
        files={"histogram.png": source, "data/note.txt": "hello"},
        write=lambda folder: (folder / "data" / "train.jsonl").write_text('{"id": "a"}\n'),
    )
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "README.md",
        "data/note.txt",
        "data/train.jsonl",
        "histogram.png",
    ]
    assert DatasetCard.load(out / "README.md").data.pretty_name == DATASET_INFO["pretty_name"]

    def crash(folder: Path) -> None:
        (folder / "partial.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        hub.stage_folder(out, card, write=crash)
    assert (out / "data" / "train.jsonl").is_file() and not (out / "partial.bin").exists()  # old one intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["histogram-source.png", "subset"]
    with pytest.raises(MPRMError, match="already exists"):
        hub.stage_folder(out, card, overwrite=False)
    with pytest.raises(MPRMError, match="must be a relative path"):
        hub.stage_folder(tmp_path / "other", card, files={"../escape.txt": "x"})


# -- pushing ------------------------------------------------------------------------------------
class FakeHub(ThreadingHTTPServer):
    """Answers the five Hub endpoints a small-file `upload_folder` uses, and records every request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHubHandler)
        self.requests: list[dict] = []
        self.repos: set[str] = set()
        self.files: dict[str, bytes] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FakeHubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(
            {
                "method": self.command,
                "path": self.path,
                "auth": self.headers.get("Authorization"),
                "body": body,
            }
        )
        parts = self.path.split("?")[0].strip("/").split("/")
        if self.headers.get("Authorization") != f"Bearer {FAKE_TOKEN}":
            self._reply(401, {"error": "Invalid credentials"})
        elif parts == ["api", "whoami-v2"]:
            self._reply(200, {"type": "user", "name": "tester", "auth": {"type": "access_token"}})
        elif parts == ["api", "validate-yaml"]:
            header = json.loads(body)["content"].split("---")[1]
            valid = isinstance(yaml.safe_load(header), dict)
            self._reply(
                200 if valid else 400, {"errors": [] if valid else [{"message": "bad YAML"}], "warnings": []}
            )
        elif parts == ["api", "repos", "create"]:
            request = json.loads(body)
            repo = f"{request['organization']}/{request['name']}"
            kind = request.get("type") or "model"
            self.server.repos.add(f"{kind}:{repo}")
            prefix = {"dataset": "datasets/", "space": "spaces/"}.get(kind, "")
            self._reply(200, {"url": f"{self.server.endpoint}/{prefix}{repo}", "name": repo})
        elif len(parts) == 6 and parts[4] == "preupload":
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            self._reply(200, {"files": modes, "commitOid": "0" * 40})
        elif len(parts) == 6 and parts[4] == "commit":
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.server.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            url = f"{self.server.endpoint}/{parts[1]}/{parts[2]}/{parts[3]}/commit/{'1' * 40}"
            self._reply(200, {"commitUrl": url, "commitOid": "1" * 40, "pullRequestUrl": None})
        else:
            self._reply(404, {"error": f"fake hub: no route for {self.command} {self.path}"})

    do_GET = do_POST = _handle

    def do_HEAD(self) -> None:  # a file's metadata: the fake holds none, a 404 as the Hub answers one
        self.server.requests.append({"method": "HEAD", "path": self.path, "auth": None, "body": b""})
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.endpoint)
    template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"  # file downloads, built at import
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def staged_subset(tmp_path: Path) -> Path:
    card = hub.render_dataset_card(**DATASET_INFO)
    return hub.stage_folder(tmp_path / "subset", card, files={"data/train.jsonl": '{"id": "ai2d:1"}\n'})


def test_push_through_the_real_client_to_a_fake_hub(fake_hub: FakeHub, staged_subset: Path, capsys) -> None:
    assert hub.main([str(staged_subset), "--repo-id", "tester/bis10"]) == 0  # repo type read from the card
    out = capsys.readouterr()
    assert "pushed" in out.out and "tester/bis10" in out.out
    assert FAKE_TOKEN not in out.out + out.err
    paths = [request["path"].split("?")[0] for request in fake_hub.requests]
    assert paths[:3] == ["/api/whoami-v2", "/api/repos/create", "/api/validate-yaml"]
    assert any(p == "/api/datasets/tester/bis10/preupload/main" for p in paths)
    assert paths[-1] == "/api/datasets/tester/bis10/commit/main"
    assert fake_hub.repos == {"dataset:tester/bis10"}
    assert fake_hub.files == {
        "README.md": (staged_subset / "README.md").read_bytes(),
        "data/train.jsonl": b'{"id": "ai2d:1"}\n',
    }


def test_offline_push_fails_in_one_line_and_sends_nothing(fake_hub, staged_subset, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MPRMError, match=r"the Hub is offline \(HF_HUB_OFFLINE=1\)") as error:
        hub.push_folder(staged_subset, "tester/bis10", repo_type="dataset")
    assert "\n" not in str(error.value)
    assert fake_hub.requests == [] and fake_hub.repos == set()


def test_unreachable_hub_or_bad_token_creates_nothing(fake_hub, staged_subset, monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_" + "Wrong" * 7)
    with pytest.raises(MPRMError, match="refused the token") as error:
        hub.push_folder(staged_subset, "tester/bis10", repo_type="dataset")
    assert "\n" not in str(error.value) and "Wrong" not in str(error.value)
    assert [r["path"] for r in fake_hub.requests] == ["/api/whoami-v2"] and fake_hub.repos == set()

    closed = FakeHub()  # bind a port, then close it: nothing listens there
    closed.server_close()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed.endpoint)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(MPRMError, match="cannot push .*: the Hub .* cannot be reached") as error:
        hub.push_folder(staged_subset, "tester/bis10", repo_type="dataset")
    assert "\n" not in str(error.value)


def test_push_refuses_a_folder_without_a_card_or_with_a_token(fake_hub, tmp_path: Path) -> None:
    (tmp_path / "bare").mkdir()
    with pytest.raises(MPRMError, match="README.md: no card; stage a subset"):
        hub.main([str(tmp_path / "bare"), "--repo-id", "tester/x", "--repo-type", "model"])
    (tmp_path / "bare" / "config.json").write_text("{}")  # a model folder from elsewhere: how to get a card
    with pytest.raises(
        MPRMError, match="no model card; `mprm-hf train` and `PRMTrainer.save_model` write one"
    ):
        hub.main([str(tmp_path / "bare"), "--repo-id", "tester/x"])
    card = hub.render_model_card(**MODEL_INFO)
    leaky = hub.stage_folder(tmp_path / "leaky", card)
    (leaky / "notes.txt").write_text(f"token={FAKE_TOKEN}")  # added after staging, by hand
    with pytest.raises(MPRMError, match="notes.txt: contains a Hugging Face access token"):
        hub.push_folder(leaky, "tester/x", repo_type="model")
    assert fake_hub.requests == []


def test_a_staged_space_is_pushed_as_a_gradio_space(fake_hub: FakeHub, tmp_path: Path) -> None:
    card = RepoCard("---\ntitle: demo\nsdk: gradio\napp_file: app.py\n---\n\n# Demo\n")
    folder = hub.stage_folder(tmp_path / "space", card, files={"app.py": "print('hello')\n"})
    assert hub.main([str(folder), "--repo-id", "tester/demo"]) == 0  # type read from the card: a Space
    create = next(r for r in fake_hub.requests if r["path"] == "/api/repos/create")
    assert json.loads(create["body"])["sdk"] == "gradio"
    assert fake_hub.repos == {"space:tester/demo"} and set(fake_hub.files) == {"README.md", "app.py"}


@pytest.mark.slow
def test_the_wheel_ships_the_card_templates(tmp_path):
    """A real wheel of the project holds the card templates, and a card renders from the unpacked wheel
    alone (not from this checkout)."""
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    wheel = next(tmp_path.glob("mprm_hf-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert {"mprm_hf/hub_cards/model_card.md", "mprm_hf/hub_cards/dataset_card.md"} <= set(names)
        archive.extractall(tmp_path / "site")
    script = (
        "import mprm_hf.hub as hub, sys; assert hub.__file__.startswith(sys.argv[1]), hub.__file__;"
        "print(hub.CARDS_DIR); assert (hub.CARDS_DIR / 'model_card.md').is_file()"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, sys.argv[1]); {script}", str(tmp_path / "site")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "site") in result.stdout


# -- trained folders and the trainer's own push -----------------------------------------------------
def _config(tmp_path: Path, **overrides):
    from mprm_hf import PRMConfig

    values = {"output_dir": str(tmp_path / "prm"), "max_steps": 1, "per_device_train_batch_size": 2,
              "max_length": 384, "use_cpu": True, "report_to": "none", "save_strategy": "no", **overrides}  # fmt: skip
    return PRMConfig(**values)


def test_a_trained_folder_is_pushed_as_it_is_without_its_checkpoints(
    fake_hub: FakeHub, tiny_model_dir: Path, tiny_stepwise, tmp_path: Path
) -> None:
    from mprm_hf import PRMTrainer

    trainer = PRMTrainer(str(tiny_model_dir), _config(tmp_path), train_dataset=tiny_stepwise)
    trainer.train()
    trainer.save_model()
    folder = tmp_path / "prm"
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "model.safetensors").write_bytes(b"old weights")
    assert hub.main([str(folder), "--repo-id", "tester/prm"]) == 0  # a model: read from the card
    assert fake_hub.repos == {"model:tester/prm"}
    assert {"README.md", "model.safetensors", "config.json", "processor_config.json"} <= set(fake_hub.files)
    assert not any(name.startswith("checkpoint-") for name in fake_hub.files)
    assert fake_hub.files["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_trainer_push_to_hub_the_trainer_way(
    fake_hub: FakeHub, tiny_model_dir: Path, tiny_stepwise, tmp_path: Path
) -> None:
    from mprm_hf import PRMTrainer

    args = _config(tmp_path, push_to_hub=True, hub_model_id="tester/prm-pushed")
    trainer = PRMTrainer(str(tiny_model_dir), args, train_dataset=tiny_stepwise, dataset_name="tester/bis10")
    assert "model:tester/prm-pushed" in fake_hub.repos  # created when the trainer started, as Trainer does
    trainer.train()
    trainer.push_to_hub()
    card = ModelCard(fake_hub.files["README.md"].decode())
    assert "prm" in card.data.tags and card.data.datasets == ["tester/bis10"]
    assert "model.safetensors" in fake_hub.files


def test_an_offline_trainer_push_is_one_line_before_training(
    tiny_model_dir: Path, tiny_stepwise, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mprm_hf import PRMTrainer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    args = _config(tmp_path, push_to_hub=True, hub_model_id="tester/prm")
    with pytest.raises(MPRMError, match="cannot push tester/prm: the Hub is offline") as error:
        PRMTrainer(str(tiny_model_dir), args, train_dataset=tiny_stepwise)
    assert "\n" not in str(error.value) and not (tmp_path / "prm").exists()
    trainer = PRMTrainer(str(tiny_model_dir), _config(tmp_path), train_dataset=tiny_stepwise)
    with pytest.raises(MPRMError, match="the Hub is offline"):
        trainer.push_to_hub()
    assert not (tmp_path / "prm" / "model.safetensors").exists()  # refused before anything was saved


def test_peft_config_is_accepted_as_trl_does(tiny_model_dir: Path, tiny_stepwise, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel

    from mprm_hf import PRMTrainer

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = PRMTrainer(
        str(tiny_model_dir), _config(tmp_path), train_dataset=tiny_stepwise, peft_config=lora
    )
    assert isinstance(trainer.model, PeftModel)
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "trainable_tokens" in name for name in trainable)
    assert trainer.train().training_loss > 0
