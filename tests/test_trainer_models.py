"""PRMTrainer on each supported family, offline, with tiny configs: Qwen2-VL, Qwen2.5-VL, LLaVA, InternVL
(transformers-native) and Idefics3 (the architecture of SmolVLM).

Each family gets the tiny BPE tokenizer of the embedded model plus the family's own special tokens, its PIL image
processor at 28 px, its processor class and a ChatML template whose image slot is the family's placeholder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    GotOcr2ImageProcessorPil,
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    InternVLConfig,
    InternVLProcessor,
    LlavaConfig,
    LlavaProcessor,
)

from mprm_hf.modeling import (
    TINY_CHAT_TEMPLATE,
    build_tiny_model,
    build_tiny_tokenizer,
    load_model_and_processor,
)
from mprm_hf.prm_config import PRMConfig
from mprm_hf.prm_trainer import PRMTrainer, projector_parameters, vision_tower_parameters

TEXT_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
VISION_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
QWEN_IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"


def chat_template(image_slot: str) -> str:
    return TINY_CHAT_TEMPLATE.replace(QWEN_IMAGE_SLOT, image_slot)


class InternVLImageTextProcessor(InternVLProcessor):
    """InternVL's processor without its video processor (which needs torchvision, absent here)."""

    def __init__(
        self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs
    ):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_length=image_seq_length,
            chat_template=chat_template,
            **kwargs,
        )


def tiny_llava():
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template("<image>"),
    )
    config = LlavaConfig(
        text_config={"model_type": "qwen2", **TEXT_CONFIG, "vocab_size": len(tokenizer)},
        vision_config={
            "model_type": "clip_vision_model",
            **VISION_CONFIG,
            "image_size": 28,
            "patch_size": 14,
            "projection_dim": 32,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return config, processor


def tiny_internvl():
    tokenizer = build_tiny_tokenizer()
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tokenizer.add_special_tokens(
        {"extra_special_tokens": list(named.values())}, replace_extra_special_tokens=False
    )
    for name, token in named.items():  # the attributes InternVL's processor reads from its tokenizer
        setattr(tokenizer, name, token)
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    image_processor = GotOcr2ImageProcessorPil(size={"height": 28, "width": 28}, crop_to_patches=False)
    processor = InternVLImageTextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=1,
        chat_template=chat_template("<IMG_CONTEXT>"),
    )
    config = InternVLConfig(
        text_config={"model_type": "qwen2", **TEXT_CONFIG, "vocab_size": len(tokenizer)},
        vision_config={**VISION_CONFIG, "image_size": [28, 28], "patch_size": [14, 14]},
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=0.5,
    )
    return config, processor


def tiny_idefics3():
    tokenizer = build_tiny_tokenizer()
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 28}, max_image_size={"longest_edge": 28}, do_image_splitting=False
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=1,
        chat_template=chat_template("<image>"),
    )
    config = Idefics3Config(
        text_config={"model_type": "llama", **TEXT_CONFIG, "vocab_size": len(tokenizer)},
        vision_config={**VISION_CONFIG, "image_size": 28, "patch_size": 14},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    return config, processor


BUILDERS = {"llava": tiny_llava, "internvl": tiny_internvl, "idefics3": tiny_idefics3}


@pytest.fixture(scope="module")
def records(synthetic_dir: Path):
    from mprm_hf.data.stepwise import to_stepwise
    from mprm_hf.data.visualprm400k import load_visualprm400k

    rollouts, _ = load_visualprm400k(synthetic_dir)
    return to_stepwise(rollouts)[0].select(range(24))


def model_and_processor(family: str, tmp_path: Path):
    if family in {"qwen2_vl", "qwen2_5_vl"}:
        return load_model_and_processor(build_tiny_model(tmp_path / family, arch=family, seed=0))
    config, processor = BUILDERS[family]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForImageTextToText.from_config(config), processor


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava", "internvl", "idefics3"])
def test_family_trains_with_frozen_vision_tower(family: str, records, tmp_path: Path) -> None:
    model, processor = model_and_processor(family, tmp_path)
    frozen = {name: parameter.detach().clone() for name, parameter in vision_tower_parameters(model)}
    assert frozen, f"no vision tower found in {type(model).__name__}"
    projector = {name: parameter.detach().clone() for name, parameter in projector_parameters(model)}
    assert projector, f"no projector found in {type(model).__name__}"
    assert not set(projector) & set(frozen)
    trained = {
        name: parameter.detach().clone()
        for name, parameter in model.named_parameters()
        if "layers.0.self_attn.q_proj.weight" in name and name not in frozen  # a language-model layer
    }
    args = PRMConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        seed=0,
        learning_rate=1e-2,
        per_device_train_batch_size=4,
        max_steps=3,
        max_length=512,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = PRMTrainer(model=model, args=args, train_dataset=records, processing_class=processor)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)
    rollouts = sum(entry.get("prm_rollouts", 0) > 0 for entry in trainer.state.log_history)
    assert rollouts
    parameters = dict(trainer.model.named_parameters())
    assert all(torch.equal(parameters[name], value) for name, value in frozen.items())
    assert trained and all(not torch.equal(parameters[name], value) for name, value in trained.items())
    # the projector trains with the tower frozen (weights: biases and norms may get no gradient at 3 steps)
    weights = [name for name in projector if name.endswith("weight") and parameters[name].dim() > 1]
    assert weights and all(not torch.equal(parameters[name], projector[name]) for name in weights)
