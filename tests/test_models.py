import json
from pathlib import Path

import pytest
import torch

from selfalign.models import ModelNotFoundError, convert_gguf, default_gguf_path, load_tokenizer, resolve_model


def test_default_model_is_a_safetensors_folder_with_chat_template(default_model_path):
    folder = Path(default_model_path)
    assert (folder / "model.safetensors").exists()
    assert not list(folder.glob("*.bin")), "weights must be safetensors only"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config, "the GGUF quantization config would block training"
    tokenizer = load_tokenizer("default")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhi<|im_end|>" in text


def test_gguf_conversion_matches_gguf_weights(tmp_path):
    """Converting the GGUF file gives the same logits as transformers' own GGUF loader."""
    from transformers import AutoModelForCausalLM

    gguf = default_gguf_path()
    out = convert_gguf(gguf, tmp_path / "converted")
    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits)
    assert convert_gguf(gguf, out) == out  # cached: a second call does no work


def test_missing_models_give_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model(str(tmp_path / "no" / "such" / "folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_cache_dir_respects_environment(monkeypatch, tmp_path):
    from selfalign.models import cache_dir

    monkeypatch.delenv("SELFALIGN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "selfalign"
    monkeypatch.setenv("SELFALIGN_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
