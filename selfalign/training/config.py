"""Training configuration, with TRL's names where TRL has the same knob."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selfalign.dtypes import HELP as DTYPE_HELP, DtypeName

from selfalign.losses import LOSS_ALIASES, LOSSES


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="the policy to train; also the reference (the previous iterate)")
    loss_type: str = Field("dpo", description=f"{' | '.join(LOSSES)}; TRL's names too: "
                           + ", ".join(f"{k} (= {v})" for k, v in LOSS_ALIASES.items()))
    beta: float = Field(0.1, gt=0, description="unset: the loss's own default (0.1; 2.0 for simpo and ln_dpo)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO's ε (loss_type cdpo; unset: 0.1)")
    alpha: float = Field(1.0, ge=0, description="NLL weight for rpo/scpo; self-vs-generative mix for srpo (unset: 0.8)")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target margin γ")
    lipo_lambda_weights: bool = Field(True, description="LiPO-λ's Δ weights (False: every ordered pair weighs 1)")
    desirable_weight: float = Field(1.0, gt=0, description="KTO's λ_D, the weight of desirable completions")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO's λ_U, the weight of undesirable completions")
    value_learning_rate: float = Field(1e-3, gt=0, description="DRO: learning rate of the value head V(x)")

    learning_rate: float = Field(5e-6, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="optimizer steps; overrides num_train_epochs when > 0")
    per_device_train_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = Field(1024, ge=8, description="prompt + completion tokens")
    max_prompt_length: int = Field(512, ge=1)
    seed: int = 42

    use_peft: bool = Field(True, description="train a LoRA adapter (False: full finetuning)")
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str = Field("all-linear", description="module names, or all-linear "
                                                 "(repeat the flag for several)")
    load_in_4bit: bool = Field(False, description="QLoRA: 4-bit base weights through bitsandbytes (GPU only)")
    gradient_checkpointing: bool = False
    dtype: DtypeName = Field("auto", description=f"dtype the weights are loaded in: {DTYPE_HELP}")
    bf16: bool | None = Field(None, description="bf16 mixed precision as TRL's `bf16`: autocast, fp32 weights and "
                              "optimizer. None (auto): on where the hardware computes bf16 (CPU avx512_bf16/amx_bf16, "
                              "a bf16 GPU), else off; `accelerate launch --mixed_precision bf16` turns it on too")
    share_prompt_forward: bool = Field(True, description="run each group's shared prompt through the model once and "
                                       "reuse its key/value cache for the group's completions (off under gradient "
                                       "checkpointing, which disables the cache)")
    sampler_reference: bool = Field(True, description="take the reference log-probs recorded by the sampler "
                                    "(ref_chosen_logps, ... with their token ids) where the trainer's own tokens are the "
                                    "same; in `selfalign run`, generation records them")
    sampler_reference_probe: int = Field(8, ge=1, description="records whose sampler log-probs are checked against "
                                         "the trainer's own before any of them is used")
    sampler_reference_tolerance: float = Field(0.05, gt=0, description="the most the sampler's log-prob of a sequence "
                                               "may differ from the trainer's (nats); beyond it the trainer computes "
                                               "the whole reference")
    precompute_ref_log_probs: bool = Field(True, description="one reference pass before training; else a live "
                                           "reference (adapter disabled with LoRA, a frozen copy otherwise)")

    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = 2
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"], description="tensorboard | wandb | none "
                                 "(repeat the flag for several)")

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _one_target_word(cls, value):
        """`--lora-target-modules all-linear` arrives as a one-item list; PEFT reads the word only as a string."""
        return value[0] if isinstance(value, (list, tuple)) and list(value) == ["all-linear"] else value

    @field_validator("report_to", mode="before")
    @classmethod
    def _none_means_no_tracker(cls, value):
        """TRL's `--report-to none`."""
        if value == "none" or (isinstance(value, (list, tuple)) and list(value) == ["none"]):
            return []
        return [value] if isinstance(value, str) else value
    record_rank_checksums: bool = Field(False, description="each rank writes a checksum of its weights (tests)")

    @field_validator("loss_type")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in LOSSES:
            raise ValueError(f"unknown loss_type {value!r}: choose one of {', '.join(LOSSES)} (or TRL's "
                             f"{', '.join(f'{a} = {b}' for a, b in LOSS_ALIASES.items())})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _loss_defaults(cls, values: Any) -> Any:
        """TRL's loss names become ours (`sigmoid` is dpo); fields the user left unset take the chosen loss's own
        defaults (SimPO's β is 2.0, not DPO's 0.1)."""
        if isinstance(values, dict) and values.get("loss_type") in LOSS_ALIASES:
            values = {**values, "loss_type": LOSS_ALIASES[values["loss_type"]]}
        if isinstance(values, dict) and values.get("loss_type", "dpo") in LOSSES:
            defaults = LOSSES[values.get("loss_type", "dpo")].defaults
            values = {**{k: v for k, v in defaults.items() if values.get(k) is None}, **{k: v for k, v in
                                                                                       values.items() if v is not None}}
        return values
