"""The tiny offline VLM: tokenizer, processor round trip, save/load with identical logits, loader errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer

from mprm_hf.errors import MPRMError
from mprm_hf.modeling import (
    PRM_MARKER_TOKEN,
    Qwen2VLImageTextProcessor,
    _trained_bpe,
    build_tiny_model,
    count_parameters,
    create_tiny_model,
    load_model_and_processor,
)


def _batch(processor, n_images: int = 1):
    images = [Image.new("RGB", (64, 48 + 16 * i), (40 * i, 200, 10)) for i in range(n_images)]
    content = [{"type": "image"} for _ in images] + [
        {"type": "text", "text": "Question: which colour?\nProcess: red<prm>"}
    ]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
    return processor(text=[text], images=images, return_tensors="pt")


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_save_load_round_trip_gives_identical_logits(tmp_path: Path, arch: str) -> None:
    model, processor = create_tiny_model(arch=arch, seed=3)
    folder = build_tiny_model(tmp_path / arch, arch=arch, seed=3)
    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(loaded) is type(model)
    assert 400_000 < count_parameters(loaded) < 800_000
    batch = _batch(processor, n_images=2)
    with torch.no_grad():
        expected = model(**batch).logits
        actual = loaded(**batch).logits
    assert expected.shape[-1] == len(processor.tokenizer)
    assert torch.equal(expected, actual)


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MPRMError, match="unknown tiny model architecture 'llama'"):
        build_tiny_model(tmp_path, arch="llama")


def test_build_is_deterministic_under_the_seed(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", seed=1)
    _trained_bpe.cache_clear()  # train the tokenizer again rather than reuse the cached one
    second = build_tiny_model(tmp_path / "b", seed=1)
    other = build_tiny_model(tmp_path / "c", seed=2)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_processor_round_trip_in_the_stock_layout(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The folder names the stock class (so plain transformers never mistakes it for a tokenizer) and
    mprm_hf's loader rebuilds the image-only processor from it, identical after a second save."""
    _, processor = load_model_and_processor(tiny_model_dir)
    assert isinstance(processor, Qwen2VLImageTextProcessor)
    saved = json.loads((tiny_model_dir / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2VLProcessor"
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert saved["video_processor"]["size"] == saved["image_processor"]["size"]
    tokenizer_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["processor_class"] == "Qwen2VLProcessor"
    processor.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "processor_config.json").read_text()) == saved
    again = Qwen2VLImageTextProcessor.from_pretrained(tmp_path / "again")
    assert again.chat_template == processor.chat_template
    assert again.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert again.image_processor.to_dict() == processor.image_processor.to_dict()
    first, second = _batch(processor, n_images=2), _batch(again, n_images=2)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # a 64x48 image is resized into the small range: a handful of merged image tokens, not hundreds
    assert int((first["input_ids"] == processor.image_token_id).sum()) <= 8
    with pytest.raises(MPRMError, match="publish it with mprm_hf.hub"):
        processor.save_pretrained(tmp_path / "pushed", push_to_hub=True)


def test_tokenizer_has_the_step_format_tokens_and_encodes_any_text(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for word in ("Yes", "No", "+", "-", PRM_MARKER_TOKEN, "<|im_start|>", "<|image_pad|>"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
    assert PRM_MARKER_TOKEN in tokenizer.all_special_tokens
    text = "Ünïcödé 数学 ∑ x² = 4 😀\n\nstep"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert 300 < len(tokenizer) <= 1024


def test_load_model_and_processor_loads_the_folder(tiny_model_dir: Path) -> None:
    model, processor = load_model_and_processor(tiny_model_dir, dtype="bfloat16")
    assert not model.training
    assert model.dtype == torch.bfloat16
    assert isinstance(processor, Qwen2VLImageTextProcessor)


@pytest.mark.parametrize("video_config", ["nested", "none", "own file"])
def test_stock_qwen2_vl_processor_folder_loads_image_only(tmp_path: Path, video_config: str) -> None:
    """A Qwen2-VL folder names `Qwen2VLProcessor`, whose video half needs torchvision (absent here) or a
    video config (nested in processor_config.json as mprm_hf saves it, in its own file as older real
    checkpoints have it, or none); the loader falls back to the image-only processor with the same
    tokenizer and images."""
    folder = build_tiny_model(tmp_path / "stock")
    config = json.loads((folder / "processor_config.json").read_text())
    video = config.pop("video_processor")
    if video_config != "nested":
        (folder / "processor_config.json").write_text(json.dumps(config))
    if video_config == "own file":
        (folder / "video_preprocessor_config.json").write_text(json.dumps(video))
    _, processor = load_model_and_processor(folder)
    assert isinstance(processor, Qwen2VLImageTextProcessor)
    _, reference = create_tiny_model()
    assert torch.equal(_batch(processor)["input_ids"], _batch(reference)["input_ids"])


def test_load_model_and_processor_applies_a_lora_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base, processor = load_model_and_processor(tiny_model_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    batch = _batch(processor)
    with torch.no_grad():
        expected = peft_model(**batch).logits
    model, _ = load_model_and_processor(tiny_model_dir, adapter=tmp_path / "adapter")
    with torch.no_grad():
        actual = model(**batch).logits
    assert torch.allclose(expected, actual, atol=1e-6)
    plain, _ = load_model_and_processor(tiny_model_dir)
    with torch.no_grad():
        assert not torch.allclose(plain(**batch).logits, actual, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./no/such/folder", "model folder not found"),
        ("nobody-here/not-a-model", "no such folder, and the Hub has no such model or cannot be reached"),
    ],
)
def test_load_errors_are_one_line(name: str, message: str) -> None:
    with pytest.raises(MPRMError, match=re.escape(message)) as info:
        load_model_and_processor(name)
    assert "\n" not in str(info.value)


def test_bad_adapter_and_dtype_are_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MPRMError, match="not a PEFT adapter folder"):
        load_model_and_processor(tiny_model_dir, adapter=tmp_path)
    with pytest.raises(MPRMError, match="unknown dtype"):
        load_model_and_processor(tiny_model_dir, dtype="float77")


def test_a_folder_of_pickled_weights_only_is_refused_in_one_line(tmp_path):
    """safetensors only: a `pytorch_model.bin` folder is refused before anything is unpickled."""
    import shutil

    from mprm_hf.errors import MPRMError
    from mprm_hf.modeling import build_tiny_model, load_model_and_processor

    folder = build_tiny_model(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(
        MPRMError, match=r"holds only pickled weights \(pytorch_model.bin\); mprm-hf loads safetensors only"
    ) as err:
        load_model_and_processor(folder)
    assert "\n" not in str(err.value)
    shutil.rmtree(folder)


def test_a_mistyped_local_model_path_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    """`outputs/tiny-cpuu` with an `outputs/` folder here is a missing local folder, said at once."""
    from mprm_hf.errors import MPRMError
    from mprm_hf.modeling import load_model_and_processor

    (tmp_path / "outputs" / "tiny-cpu").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MPRMError, match=r"^outputs/tiny-cpuu: model folder not found$"):
        load_model_and_processor("outputs/tiny-cpuu")
