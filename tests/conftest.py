"""Shared fixtures: the real default model, a tiny random model with the real tokenizer, the shared benchmark data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Every machine takes the same `auto` precision decisions in the suite (an AVX2 CPU's: fp32), so a test's numbers do
# not depend on where it runs; bf16 is tested by asking for it (tests/test_precision.py). Set before any test
# starts a subprocess, which inherits it.
os.environ["SELFALIGN_CPU_FLAGS"] = "avx2 fma"
# No test takes another's engine outputs from the job cache; its own test turns it on in a folder of its own.
os.environ["SELFALIGN_JOB_CACHE"] = "off"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_model_path() -> str:
    from selfalign.models import resolve_model

    return resolve_model("default")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, default_model_path) -> str:
    """A 2-layer random Llama with SmolLM2's real tokenizer and chat template: for fast trainer tests."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture()
def cli_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
