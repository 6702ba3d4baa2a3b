"""`PRMConfig`: the training arguments of a multimodal process reward model.

A `transformers.TrainingArguments` subclass in the style of TRL's configs: every PRM-specific knob is a
dataclass field with help text, so the same class drives Python code, YAML recipes and the command line
(`HfArgumentParser` / `TrlParser`). The defaults are the paper's set-up (docs/definitions.md#model-and-training): one epoch, lr 1e-5 with
a cosine schedule, 5% warmup, weight decay 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from mprm_hf.errors import MPRMError

STEP_FORMATS = ("prm-token", "visualprm")
LABEL_MODES = ("hard", "soft")
TRUNCATION_RULES = ("drop_tail_steps", "drop_rollout")

# LoRA goes into the language model's projections only: the vision tower is usually frozen, and Qwen2.5-VL's
# vision blocks reuse the names gate_proj/up_proj/down_proj, so a bare name list would adapt them too.
DEFAULT_LORA_TARGETS = (
    r".*(?:language_model|text_model)\..*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


@dataclass
class PRMConfig(TrainingArguments):
    """Arguments for `PRMTrainer`. Fields below are PRM-specific; the rest are `TrainingArguments`."""

    # ---- PRM input and targets -----------------------------------------------------------------------
    step_format: str = field(
        default="prm-token",
        metadata={
            "help": "How a trace becomes model input (mprm_hf.step_format): 'prm-token' (one turn, a <prm> marker "
            "after each step, reward tokens Yes/No) or 'visualprm' (one user turn per step, the assistant "
            "answers +/-). Training and scoring share this builder.",
            "choices": list(STEP_FORMATS),
        },
    )
    max_length: int | None = field(
        default=8192,
        metadata={
            "help": "Maximum sequence length in tokens (text + image tokens). Longer rollouts follow `truncation`. "
            "None: no limit."
        },
    )
    truncation: str = field(
        default="drop_tail_steps",
        metadata={
            "help": "What happens to a rollout longer than max_length. 'drop_tail_steps': keep the leading steps "
            "whose markers fit and drop the tail steps (their markers carry no loss); 'drop_rollout': the whole "
            "rollout carries no loss. Either way every dropped step and rollout is counted in the logs.",
            "choices": list(TRUNCATION_RULES),
        },
    )
    label_mode: str = field(
        default="hard",
        metadata={
            "help": "'hard': the target of a step is its boolean label; 'soft': its Monte Carlo score (the fraction "
            "of correct continuations) is the target probability of the positive reward token.",
            "choices": list(LABEL_MODES),
        },
    )
    label_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Re-derive hard labels from the MC scores: a step is positive iff mc_score > label_threshold. "
            "None: use the dataset's `labels` column as is (made with the converter's threshold, 0.0 by default)."
        },
    )
    freeze_vision_tower: bool = field(
        default=True,
        metadata={
            "help": "Freeze the vision encoder (the projector and the language model still train), as in docs/definitions.md#model-and-training."
        },
    )
    curriculum: bool = field(
        default=False,
        metadata={
            "help": "Train in dataset order, without shuffling or length grouping (e.g. an entropy-ordered subset, "
            "low to high). Overrides train_sampling_strategy."
        },
    )
    dataset_num_proc: int | None = field(
        default=None,
        metadata={"help": "Processes for the datasets map that computes lengths and checks records."},
    )

    # ---- LoRA -----------------------------------------------------------------------------------------
    use_peft: bool = field(
        default=False, metadata={"help": "Train a LoRA adapter (peft) instead of all weights."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names (or one regex) that get LoRA layers. Default: the language model's attention "
            "and MLP projections."
        },
    )

    # ---- Defaults changed from TrainingArguments (docs/definitions.md#model-and-training) -----------------------------------------------
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial AdamW learning rate."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Linear warmup: an integer number of steps, or a ratio in [0, 1)."}
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs: the paper makes a single pass."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Sampler: 'group_by_length' (default; batches of similar length, less padding), 'random', "
            "'sequential', 'batch_rebalance'. Lengths are computed once by a datasets map.",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the raw stepwise columns: the collator reads them."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (`training_args.bin` in every checkpoint and output folder) without the Hub token: no
        file of a run may hold one. The object in memory keeps it."""
        state = dict(self.__dict__)
        state["hub_token"] = None
        return state

    def __post_init__(self) -> None:
        if self.hub_token:
            from mprm_hf.hub import register_token

            register_token(self.hub_token)  # so the secret scans of cards and staged folders look for it too
        for name, allowed in (
            ("step_format", STEP_FORMATS),
            ("label_mode", LABEL_MODES),
            ("truncation", TRUNCATION_RULES),
        ):
            if getattr(self, name) not in allowed:
                raise MPRMError(
                    f"PRMConfig: field {name!r} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        if self.max_length is not None and self.max_length <= 0:
            raise MPRMError(f"PRMConfig: field 'max_length' must be positive, got {self.max_length}")
        if self.curriculum:
            self.train_sampling_strategy = "sequential"
        checkpointing = (
            self.activation_checkpointing or self.gradient_checkpointing
        )  # the old name is an alias
        if (
            checkpointing
            and self.activation_checkpointing_kwargs is None
            and self.gradient_checkpointing_kwargs is None
        ):
            # Reentrant checkpointing needs inputs that require grad, which a frozen vision tower does not give.
            self.activation_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()
