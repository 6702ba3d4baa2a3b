"""Load a vision-language model + processor (Hub id, local folder, LoRA adapter) and build the tiny
offline Qwen2-VL / Qwen2.5-VL that the embedded default trains.

The tiny model is a real Qwen2-VL (or Qwen2.5-VL) built from a config with random weights, a byte-level
BPE tokenizer trained here with `tokenizers`, the PIL image processor and a ChatML chat template, so the
whole pipeline (collation, training, scoring, saving, loading) runs the same code a 7B model runs.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

from mprm_hf.errors import MPRMError, first_line
from mprm_hf.fileio import atomic_output, write_text_atomic
from mprm_hf.hub_access import from_hub

Arch = Literal["qwen2_vl", "qwen2_5_vl"]

# The special tokens of Qwen2-VL's tokenizer (same spelling, so real chat templates and processors work).
QWEN2_VL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# The step marker of the `prm-token` format: an added special token so that step text can never produce it.
PRM_MARKER_TOKEN = "<prm>"
# Tokens that must be single tokens of the vocabulary: the reward tokens of both step formats.
SINGLE_TOKEN_WORDS = ("Yes", "No", "+", "-")

TINY_VOCAB_SIZE = 768
# Width 128 and 2 text layers: as good as 4 or 8 layers on the synthetic world in a CPU budget, and faster.
TINY_WIDTH = 128
TINY_LAYERS = 2
# About 1 / sqrt(width). Transformers' default of 0.02 suits widths in the thousands: at width 128 it leaves
# attention uniform and the model learns far more slowly.
TINY_INIT = 0.08
# Images are resized to between 28x28 and 56x56 pixels: a 64x64 image gives 4 x 4 patches of 14 px,
# merged 2 x 2 into 4 image tokens, which keeps a CPU training step at a few hundredths of a second.
TINY_MIN_PIXELS = 28 * 28
TINY_MAX_PIXELS = 56 * 56

# ChatML, as Qwen2-VL writes it, without a default system turn; images render as vision blocks.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Text the tokenizer always learns from, whatever else is available: the step formats' own words, so
# that their pieces get merges of their own and `Yes` / `No` become single tokens.
_BUILTIN_TEXT = (
    "Question: What is the colour of the circle in the image?\nProcess: The circle is red.\n\n"
    "### Question:\nHow many squares are there?\n\n### Solution Process:\nThere are 3 squares.\n"
    "You are a process reward model. Judge whether each step of the solution is correct.\n"
    "Step 1: The triangle is on the left. Step 2: Therefore the answer is B.\n"
    "Yes\nNo\n+\n-\nYes No Yes No + - + -\n"
    "The answer is 0 1 2 3 4 5 6 7 8 9 10 12 16 24 32.\n"
    "red green blue yellow purple orange black white circle square triangle star left right top bottom\n"
    "system user assistant image images step steps correct incorrect answer question solution\n"
    # chat turns and short answers start lines: they get pieces of their own too
    "user\nassistant\nsystem\nYes\nNo\nyes\nno\nred\ngreen\nblue\nyellow\ntop left\ntop right\n"
    "bottom left\nbottom right\nnothing\na red circle\nA\nB\nC\nD\n0\n1\n2\n3\n4\n"
)


class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor for images and text only.

    `Qwen2VLProcessor` also owns a video processor, which needs torchvision; PRMs score images, so this
    subclass drops it and works with the PIL image processor alone. It saves a folder in the stock
    layout (`processor_class: Qwen2VLProcessor` and a video processor config), so plain transformers
    without mprm_hf rebuilds the stock processor where torchvision exists and raises an ImportError
    naming torchvision where it does not, instead of falling back to a bare tokenizer; mprm_hf's own
    loader (`load_model_and_processor`) rebuilds this class in that case.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs
        )

    def to_dict(self) -> dict[str, Any]:
        """The stock processor's `processor_config.json`: its class name and a video processor config."""
        output = super().to_dict()
        output["processor_class"] = STOCK_PROCESSOR_CLASS
        output["video_processor"] = stock_video_processor_config(output["image_processor"])
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any):
        """Save in the stock layout; the tokenizer config names the stock class too, since `AutoProcessor`
        reads it when `processor_config.json` is missing, and an unknown name there yields a tokenizer.
        Publish with `mprm_hf.hub`, which uploads the folder as saved."""
        if push_to_hub:
            raise MPRMError("save the processor to a folder and publish it with mprm_hf.hub")
        files = super().save_pretrained(save_directory, **kwargs)
        tokenizer_config = Path(save_directory) / "tokenizer_config.json"
        config = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        config["processor_class"] = STOCK_PROCESSOR_CLASS
        write_text_atomic(
            tokenizer_config, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
        return files


# The class a saved folder names: the one plain transformers builds for Qwen2-VL without mprm_hf.
STOCK_PROCESSOR_CLASS = "Qwen2VLProcessor"


def stock_video_processor_config(image_processor: dict[str, Any]) -> dict[str, Any]:
    """The stock `Qwen2VLVideoProcessor` config for this image processor: the same resizing, patching and
    normalisation, so a video's frames cost what an image costs."""
    config = {key: value for key, value in image_processor.items() if key != "image_processor_type"}
    return {**config, "video_processor_type": "Qwen2VLVideoProcessor"}


# Checkpoints whose processor can be rebuilt image-only when the stock one needs torchvision.
IMAGE_ONLY_FALLBACK_TYPES = {"qwen2_vl", "qwen2_5_vl"}

# Folders saved before the stock layout name `Qwen2VLImageTextProcessor`; registering it (under a name of
# our own, not Qwen2VLConfig, so that real checkpoints keep their processor) lets `AutoProcessor` rebuild
# them once `mprm_hf.modeling` is imported.
PROCESSOR_MAPPING.register("mprm_hf_qwen2_vl_image_text", Qwen2VLImageTextProcessor, exist_ok=True)


def _training_texts(seed: int) -> list[str]:
    """The built-in text plus text in the synthetic world's vocabulary, which the tiny model trains on."""
    from mprm_hf.data.synthetic import sample_texts

    return [_BUILTIN_TEXT] * 20 + list(sample_texts(2000, seed=seed))


@functools.lru_cache(maxsize=8)
def _trained_bpe(seed: int, vocab_size: int) -> str:
    """The trained `tokenizers` BPE as JSON; cached because training it is most of a tiny-model build."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*QWEN2_VL_SPECIAL_TOKENS, PRM_MARKER_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_texts(seed), trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer(*, seed: int = 0, vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (every string encodes) with Qwen2-VL's special tokens and `<prm>`."""
    tokenizer = Tokenizer.from_str(_trained_bpe(seed, vocab_size))
    special_tokens = [*QWEN2_VL_SPECIAL_TOKENS, PRM_MARKER_TOKEN]
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=special_tokens,
        padding_side="right",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    for word in SINGLE_TOKEN_WORDS:
        ids = wrapped.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer: {word!r} is not a single token ({ids})")
    return wrapped


def build_tiny_processor(*, seed: int = 0) -> Qwen2VLImageTextProcessor:
    """Tokenizer + PIL image processor + chat template, small images."""
    image_processor = Qwen2VLImageProcessorPil(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    return Qwen2VLImageTextProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_tokenizer(seed=seed),
        chat_template=TINY_CHAT_TEMPLATE,
    )


_VISION_TOKEN_NAMES = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


# Every attention head is 32 wide: the multimodal rotary sections (time, height, width) split its 16 frequencies.
TINY_HEAD_DIM = 32
TINY_MROPE_SECTION = [4, 6, 6]


def tiny_model_config(
    arch: Arch,
    tokenizer: PreTrainedTokenizerFast,
    *,
    text_layers: int = TINY_LAYERS,
    width: int = TINY_WIDTH,
    kv_heads: int | None = None,
    vision_depth: int | None = None,
) -> Any:
    """A tiny config: by default 2 text layers of width 128 (4 heads, 2 KV heads), one vision block of
    width 64, about 0.6M parameters. `width` is a multiple of the 32-wide heads; `kv_heads` defaults to
    half the heads."""
    if width % TINY_HEAD_DIM or width <= 0:
        raise MPRMError(f"tiny model: width must be a positive multiple of {TINY_HEAD_DIM}, got {width}")
    heads = width // TINY_HEAD_DIM
    kv_heads = kv_heads or max(1, heads // 2)
    if heads % kv_heads:
        raise MPRMError(f"tiny model: {heads} attention heads cannot share {kv_heads} key/value heads")
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _VISION_TOKEN_NAMES.items()}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": TINY_HEAD_DIM,
        "max_position_embeddings": 4096,
        "initializer_range": TINY_INIT,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": TINY_MROPE_SECTION,
        },
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision_config = {
            "depth": vision_depth or 1,
            "embed_dim": 64,
            "hidden_size": width,
            "num_heads": 2,
            "mlp_ratio": 2,
        }
        config_class = Qwen2VLConfig
    elif arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        depth = vision_depth or 2
        vision_config = {
            "depth": depth,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "out_hidden_size": width,
            "window_size": 56,
            "fullatt_block_indexes": [depth - 1],
        }
        config_class = Qwen2_5_VLConfig
    else:
        raise MPRMError(f"unknown tiny model architecture {arch!r} (choose 'qwen2_vl' or 'qwen2_5_vl')")
    vision_config["initializer_range"] = TINY_INIT
    return config_class(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=True,
        initializer_range=TINY_INIT,
        **ids,
    )


# Qwen2-VL-2B-Instruct's published dimensions, for benchmarks at a real model's size without a download.
QWEN2_VL_2B_TEXT = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN2_VL_2B_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 1536,
    "num_heads": 16,
    "mlp_ratio": 4,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
QWEN2_VL_2B_VOCAB_SIZE = 151936


def qwen2_vl_2b_config(
    tokenizer: PreTrainedTokenizerFast, *, text_layers: int | None = None, vision_depth: int | None = None
) -> Any:
    """A Qwen2-VL-2B-shaped config (full vocabulary size) whose special ids are the tiny tokenizer's.

    Random weights at the real size give honest speed and memory figures with no checkpoint to download;
    `text_layers` / `vision_depth` shrink it for a quick check on a CPU."""
    from transformers import Qwen2VLConfig

    text_config = {
        **QWEN2_VL_2B_TEXT,
        "vocab_size": max(QWEN2_VL_2B_VOCAB_SIZE, len(tokenizer)),
        "num_hidden_layers": text_layers or QWEN2_VL_2B_TEXT["num_hidden_layers"],
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = dict(QWEN2_VL_2B_VISION, depth=vision_depth or QWEN2_VL_2B_VISION["depth"])
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _VISION_TOKEN_NAMES.items()}
    return Qwen2VLConfig(
        text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, **ids
    )


def create_tiny_model(
    *, arch: Arch = "qwen2_vl", seed: int = 0, **shape: Any
) -> tuple[Any, Qwen2VLImageTextProcessor]:
    """The tiny model and its processor in memory (random weights drawn under `seed`); `shape` takes
    `tiny_model_config`'s keywords (text_layers, width, kv_heads, vision_depth)."""
    processor = build_tiny_processor(seed=seed)
    config = tiny_model_config(arch, processor.tokenizer, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model.eval(), processor


def build_tiny_model(
    out_dir: str | os.PathLike, *, arch: Arch = "qwen2_vl", seed: int = 0, **shape: Any
) -> Path:
    """Build the tiny model offline, save model + processor to `out_dir`, return that folder.

    Deterministic under `seed`: the same seed gives the same tokenizer and the same weights. `shape` as in
    `create_tiny_model`.
    """
    out = Path(out_dir)
    model, processor = create_tiny_model(arch=arch, seed=seed, **shape)
    with atomic_output(out, folder=True) as staging:  # a killed build leaves no half model behind
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    return out


def _looks_like_local_path(name: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that does not exist is a missing folder, and so
    is `outputs/tiny-cpuu` when `outputs/` is a folder here: a typo is told at once, not after a minute
    of Hub retries on a machine without network."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return True
    return name.count("/") == 1 and Path(name.split("/", 1)[0]).is_dir()


PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


def refuse_pickled_weights(folder: Path) -> None:
    """Weights are read from safetensors only: a folder that holds only pickled `*.bin` weights (which
    unpickling could turn into code) is refused in one line instead of loaded or failing deep inside."""
    has_safe = any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json"))
    pickled = [name for name in PICKLED_WEIGHTS if (folder / name).is_file()]
    if pickled and not has_safe:
        raise MPRMError(
            f"{folder}: holds only pickled weights ({pickled[0]}); mprm-hf loads safetensors only "
            "(convert with `model.save_pretrained(folder)`, which writes safetensors)"
        )


def load_model_and_processor(
    name_or_path: str | os.PathLike, *, adapter: str | os.PathLike | None = None, dtype: Any = None
) -> tuple[Any, Any]:
    """Load an `AutoModelForImageTextToText` and its processor from a Hub id or a folder, in eval mode.

    `adapter` is a PEFT (LoRA) adapter folder applied on top; when it carries its own processor (training
    added the step marker token), that processor is used and the base embeddings are resized to it.
    `dtype` is a torch dtype or its name ("bfloat16", "auto"); None keeps the checkpoint's default.
    """
    name = str(name_or_path)
    local = Path(name).expanduser()
    if not local.exists() and _looks_like_local_path(name):
        raise MPRMError(f"{name}: model folder not found")
    source = str(local) if local.exists() else name
    if local.is_dir():
        refuse_pickled_weights(local)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype, None) or _bad_dtype(dtype)

    def load(hub: dict[str, Any]) -> tuple[Any, Any]:
        # The model first: its config is the file every checkpoint has, and it fails with a clear OSError.
        # Its adapter lookup takes the Hub arguments apart (transformers does not pass them on to it).
        model = AutoModelForImageTextToText.from_pretrained(
            source, **hub, adapter_kwargs=dict(hub), **({} if dtype is None else {"dtype": dtype})
        )
        return model, _load_processor(source, model.config.model_type, **hub)

    try:
        model, processor = load({}) if local.exists() else from_hub(name, "model", load)
    except MPRMError:
        raise
    except ValueError as error:  # a config.json without a model type transformers knows
        raise MPRMError(f"{name}: not a model transformers can load: {first_line(error)}") from error
    except OSError as error:
        where = (
            "cannot load a model from this folder"
            if local.exists()
            else "no such folder, and the Hub has no such model or cannot be reached (offline and not cached?)"
        )
        raise MPRMError(f"{name}: {where}: {first_line(error)}") from error
    if adapter is not None:
        model, processor = _apply_adapter(model, processor, Path(adapter).expanduser())
    model.eval()
    return model, processor


def _load_processor(source: str, model_type: str, **hub: Any) -> Any:
    """`AutoProcessor`, falling back to the image-only processor for Qwen2-VL-family checkpoints whose
    stock processor cannot be built here (its video processor needs torchvision): real checkpoints and
    the folders mprm_hf saves, which name the stock class. `hub` holds the Hub keyword arguments."""
    try:
        return AutoProcessor.from_pretrained(source, **hub)
    except (OSError, ImportError) as error:
        if model_type not in IMAGE_ONLY_FALLBACK_TYPES:
            if isinstance(error, ImportError):
                raise MPRMError(
                    f"{source}: its processor needs a missing package: {first_line(error)}"
                ) from error
            raise
        return Qwen2VLImageTextProcessor.from_pretrained(source, **hub)


def _bad_dtype(dtype: str) -> None:
    raise MPRMError(f"unknown dtype {dtype!r} (e.g. 'float32', 'bfloat16', 'float16', 'auto')")


def _apply_adapter(model: Any, processor: Any, adapter: Path) -> tuple[Any, Any]:
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise MPRMError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    refuse_pickled_weights(adapter)
    if any((adapter / name).is_file() for name in ("processor_config.json", "tokenizer_config.json")):
        processor = _load_processor(str(adapter), model.config.model_type)
        tokenizer = getattr(processor, "tokenizer", processor)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(model, adapter), processor


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(parameter.numel() for parameter in {id(p): p for p in model.parameters()}.values())
