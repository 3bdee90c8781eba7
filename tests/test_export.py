"""Export: LoRA folded in, plain reload with the same logits, vLLM loads it, safe against kills and overwrites."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from selfalign.cli import app
from selfalign.export import ExportError, export
from selfalign.io import OutputError
from selfalign.io import write_jsonl
from selfalign.records import Message, PreferencePair
from selfalign.training.config import TrainConfig
from selfalign.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["What is 3 + 4?", "Tell me about cats."]


def _pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [PreferencePair(prompt=[Message(role="user", content=f"What is {i} + 2?")], prompt_id=str(i),
                                      chosen=[Message(role="assistant", content=f"The answer is {i + 2}.")],
                                      rejected=[Message(role="assistant", content="I don't know.")])
                       for i in range(4)])
    return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, default_model_path):
    tmp = tmp_path_factory.mktemp("lora")
    cfg = TrainConfig(model="default", loss_type="dpo", learning_rate=1e-3, max_steps=2, per_device_train_batch_size=2,
                      lora_r=8, report_to=[])
    train(cfg, _pairs_file(tmp), tmp / "run")
    return tmp / "run"


def _logits(model, tokenizer):
    with torch.no_grad():
        return [model(**tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                       return_tensors="pt", return_dict=True)).logits for p in PROMPTS]


def test_lora_export_reloads_with_plain_transformers_and_same_logits(lora_run, tmp_path, default_model_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    result = export(lora_run, out, dtype="fp32")
    assert result["max_logit_diff"] < 1e-3
    assert {p.name for p in out.iterdir()} >= {"README.md", "config.json", "generation_config.json", "chat_template.jinja",
                                               "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert not list(out.glob("adapter_*")) and not list(out.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32),
                                        str(lora_run)).eval()
    base = AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32).eval()
    for m, a, b in zip(_logits(merged, tokenizer), _logits(adapter, tokenizer), _logits(base, tokenizer)):
        torch.testing.assert_close(m, a, atol=1e-3, rtol=0)
        assert (m - b).abs().max() > 1e-3, "the adapter's change is in the merged weights"
    card = (out / "README.md").read_text()
    assert "base model" in card and "dpo" in card and "Verification" in card


def test_bf16_export_within_tolerance(lora_run, tmp_path):
    result = export(lora_run, tmp_path / "bf16", dtype="bf16")
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16" and "top-1 agreement" in result["verification"]


def test_refuses_non_empty_target(lora_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # someone else's files: refused with or without --force (the error says --force would not help either)
    with pytest.raises(OutputError, match="did not write"):
        export(lora_run, out)
    for flags in ([], ["--force"]):
        result = CliRunner().invoke(app, ["export", str(lora_run), "--out", str(out), *flags])
        assert result.exit_code == 2 and "did not write" in " ".join(result.output.split())
    assert (out / "keep.txt").read_text() == "mine"
    previous = tmp_path / "previous"
    export(lora_run, previous)
    (previous / "stale.txt").write_text("from the last export")
    with pytest.raises(ExportError, match="not empty"):  # a previous export: replaced only when asked
        export(lora_run, previous)
    result = CliRunner().invoke(app, ["export", str(lora_run), "--out", str(previous)])
    assert result.exit_code == 2 and "--force" in result.output
    export(lora_run, previous, force=True)  # a previous export is ours to replace
    assert not (previous / "stale.txt").exists() and (previous / "config.json").exists()


@pytest.mark.parametrize("where", ["current folder", "a parent", "the source", "a folder holding the source"])
def test_force_never_replaces_the_current_folder_or_an_input(lora_run, tmp_path, monkeypatch, where):
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "notes.txt").write_text("user file")
    monkeypatch.chdir(project / "sub" if where == "a parent" else project)
    out = {"current folder": ".", "a parent": "..", "the source": str(lora_run),
           "a folder holding the source": str(lora_run.parent)}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["export", str(lora_run), "--out", out, "--force"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and ("current folder" in result.output or "input" in result.output)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing deleted, nothing left
    assert (project / "notes.txt").read_text() == "user file"


def test_kill_during_export_leaves_no_target(lora_run, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "selfalign.cli", "export", str(lora_run), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".killed.*")):  # the temporary folder appears: writing has begun
        assert proc.poll() is None and time.time() < deadline, "export ended before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "no half-written target after a kill"


def test_full_finetune_export(tmp_path, tiny_model_path):
    cfg = TrainConfig(model=tiny_model_path, use_peft=False, max_steps=1, per_device_train_batch_size=2,
                      learning_rate=1e-3, report_to=[])
    train(cfg, _pairs_file(tmp_path), tmp_path / "full")
    result = export(tmp_path / "full", tmp_path / "out")
    assert result["max_logit_diff"] == 0.0 and (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_deepspeed_zero3_checkpoint_is_consolidated(tmp_path, tiny_model_path):
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    pairs = _pairs_file(tmp_path)

    def launch(out, steps):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / "deepspeed_zero3.yaml"), "--num_processes", "2", "--mixed_precision",
               "no", "-m", "selfalign.cli", "train", "--pairs", str(pairs), "--out", str(out), "--model", tiny_model_path,
               "--full", "--max-steps", str(steps), "--per-device-train-batch-size", "1", "--learning-rate", "1e-3",
               "--set", "save_steps=1", "--set", "lr_scheduler_type=constant", "--set", "report_to=[]"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    launch(tmp_path / "two", 2)  # leaves the sharded ZeRO-3 state of step 1 in checkpoint-1
    launch(tmp_path / "one", 1)  # its final, consolidated weights are the weights after step 1
    shards = tmp_path / "two" / "checkpoint-1"
    result = CliRunner().invoke(app, ["export", str(shards), "--out", str(tmp_path / "exported"), "--base-model",
                                      tiny_model_path])
    assert result.exit_code == 0, result.output
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    expected = load_file(str(tmp_path / "one" / "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(exported[name], tensor, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_exported_folder_loads_in_vllm(lora_run, tmp_path):
    from selfalign.generation import vllm_available

    if not vllm_available():
        pytest.skip("vllm is not installed")
    out = tmp_path / "for-vllm"
    export(lora_run, out)
    script = ("from selfalign.generation import get_engine, SamplingSettings\n"
              "from selfalign.records import PromptRecord\n"
              "if __name__ == '__main__':\n"
              f"    e = get_engine('vllm', {str(out)!r}, max_model_len=512)\n"
              "    s = e.generate([PromptRecord(prompt='What is 3 + 4?')], SamplingSettings(temperature=0, max_new_tokens=16))\n"
              "    print('VLLM_TEXT', repr(s[0].text))\n")
    (tmp_path / "load.py").write_text(script)
    result = subprocess.run([sys.executable, str(tmp_path / "load.py")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = next(line for line in result.stdout.splitlines() if line.startswith("VLLM_TEXT"))
    assert len(text) > len("VLLM_TEXT ''")


def test_export_names_the_tensors_that_are_not_finite(tmp_path, tiny_model_path):
    import shutil

    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from selfalign.cli import app

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_path, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(k for k in weights if "layers.1.mlp.down_proj" in k)
    weights[name][0, :3] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    result = CliRunner().invoke(app, ["export", str(broken), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    message = " ".join(result.output.split())
    assert "1 tensor(s) hold values that are not finite" in message and "layers.1.mlp.down_proj" in message
    assert "(3 of" in message and not (tmp_path / "out").exists()
