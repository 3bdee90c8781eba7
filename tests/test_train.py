"""Real training runs: the default model learns its pairs; every loss trains; resume and multi-process runs agree."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfalign.io import write_jsonl
from selfalign.records import Message, PreferencePair, RankedList
from selfalign.training.config import TrainConfig
from selfalign.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _pairs(n=8):
    pairs = []
    for i in range(n):
        a, b = 3 + i, 11 + 2 * i
        prompt = [Message(role="user", content=f"What is {a} + {b}?")]
        pairs.append(PreferencePair(prompt=prompt, prompt_id=str(i), weight=0.5 + 0.05 * i,
                                    chosen=[Message(role="assistant", content=f"{a} + {b} = {a + b}. The answer is {a + b}.")],
                                    rejected=[Message(role="assistant", content=f"The answer is {a * b + 7}.")]))
    return pairs


@pytest.fixture()
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, _pairs())
    return path


@pytest.fixture()
def lists_file(tmp_path):
    path = tmp_path / "lists.jsonl"
    rows = [RankedList(prompt=p.prompt, prompt_id=p.prompt_id, scores=[3.0, 1.0, 0.0][:2 + i % 2],
                       completions=[p.chosen, [Message(role="assistant", content="Maybe 12?")], p.rejected][:2 + i % 2])
            for i, p in enumerate(_pairs(4))]
    write_jsonl(path, rows)
    return path


def _preference_stats(model, pairs, tokenizer, beta):
    """DPO loss and reward accuracy of `model` (a PeftModel; reference = adapter disabled) on the pairs."""
    from selfalign.losses import dpo_loss
    from selfalign.training.data import collate, sequence_logps, tokenize_records

    batch = collate(tokenize_records(tokenizer, pairs, "dpo", 512, 256), tokenizer.pad_token_id)
    inputs = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        logps, _ = sequence_logps(model, *inputs)
        with model.disable_adapter():
            ref, _ = sequence_logps(model, *inputs)
    logps, ref = logps.view(-1, 2), ref.view(-1, 2)
    losses, chosen, rejected = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], beta)
    return float(losses.mean()), float((chosen > rejected).float().mean())


def test_short_run_on_default_model_learns_its_pairs(tmp_path, pairs_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from selfalign.models import load_tokenizer, resolve_model

    cfg = TrainConfig(model="default", loss_type="dpo", beta=0.1, learning_rate=5e-4, max_steps=8,
                      per_device_train_batch_size=2, lora_r=8, lora_alpha=16, report_to=["tensorboard"])
    summary = train(cfg, pairs_file, tmp_path / "run")
    assert summary["kind"] == "lora-adapter" and summary["steps"] == 8
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["loss"] == pytest.approx(0.6931, abs=1e-3), "step 1: policy == reference"
    for key in ("rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected", "ranking_accuracy"):
        assert key in metrics[-1]
    base = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
    trained = PeftModel.from_pretrained(base, tmp_path / "run" / "final").eval()
    loss, accuracy = _preference_stats(trained, _pairs(), load_tokenizer("default"), 0.1)
    assert loss < 0.6 and accuracy >= 0.75, (loss, accuracy)
    assert (tmp_path / "run" / "logs").exists(), "TensorBoard logs"


@pytest.mark.parametrize("loss_type", ["dpo", "cdpo", "ipo", "ln_dpo", "rpo", "simpo", "scpo", "srpo", "lipo"])
def test_every_loss_trains(tmp_path, pairs_file, lists_file, tiny_model_path, loss_type):
    cfg = TrainConfig(model=tiny_model_path, loss_type=loss_type, label_smoothing=0.1, learning_rate=1e-3,
                      max_steps=3, per_device_train_batch_size=2, use_peft=False, report_to=[])
    summary = train(cfg, lists_file if loss_type == "lipo" else pairs_file, tmp_path / loss_type)
    final = summary["final_metrics"]
    assert summary["steps"] == 3 and torch.isfinite(torch.tensor(final["loss"]))
    assert 0.0 <= final["ranking_accuracy"] <= 1.0


def test_live_reference_equals_precomputed(tmp_path, pairs_file, tiny_model_path):
    runs = {}
    for precompute in (True, False):
        cfg = TrainConfig(model=tiny_model_path, loss_type="dpo", learning_rate=1e-2, max_steps=3,
                          per_device_train_batch_size=2, use_peft=True, lora_r=4, report_to=[],
                          precompute_ref_log_probs=precompute)
        train(cfg, pairs_file, tmp_path / str(precompute))
        runs[precompute] = [json.loads(line) for line in (tmp_path / str(precompute) / "metrics.jsonl").read_text()
                            .splitlines()]
    for a, b in zip(runs[True], runs[False]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)


def test_bf16_mixed_precision_autocasts_and_keeps_fp32_weights(tmp_path, pairs_file, tiny_model_path):
    from safetensors.torch import load_file

    runs = {}
    for bf16 in (False, True):
        cfg = TrainConfig(model=tiny_model_path, loss_type="dpo", learning_rate=1e-3, max_steps=2,
                          per_device_train_batch_size=2, use_peft=True, lora_r=4, report_to=[], bf16=bf16)
        summary = train(cfg, pairs_file, tmp_path / str(bf16))
        runs[bf16] = [json.loads(line) for line in (tmp_path / str(bf16) / "metrics.jsonl").read_text().splitlines()]
        adapter = load_file(next((tmp_path / str(bf16) / "final").glob("*.safetensors")))
        assert {t.dtype for t in adapter.values()} == {torch.float32}, "fp32 master weights"
    fp32, mixed = runs[False][0], runs[True][0]
    assert mixed["loss"] == pytest.approx(0.6931, abs=2e-3), "step 1: policy and reference under the same autocast"
    # bf16 matmuls round differently: close to fp32, but not bit-equal (equal would mean autocast never ran)
    assert mixed["logps/chosen"] != fp32["logps/chosen"]
    assert mixed["logps/chosen"] == pytest.approx(fp32["logps/chosen"], rel=0.05)


def test_qlora_on_cpu_is_a_clear_error(tmp_path, pairs_file, tiny_model_path):
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU error")
    cfg = TrainConfig(model=tiny_model_path, load_in_4bit=True, max_steps=1, report_to=[])
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        train(cfg, pairs_file, tmp_path / "q")


def test_bad_config_names_the_field(tmp_path, pairs_file):
    from typer.testing import CliRunner

    from selfalign.cli import app

    config = tmp_path / "train.yaml"
    config.write_text("loss_type: dpo\nbeta: -1\n")
    result = CliRunner().invoke(app, ["train", "--pairs", str(pairs_file), "--out", str(tmp_path / "o"),
                                      "--config", str(config)])
    assert result.exit_code == 2 and "train.yaml" in result.output and "beta" in result.output
    config.write_text("loss_typo: dpo\n")
    result = CliRunner().invoke(app, ["train", "--pairs", str(pairs_file), "--out", str(tmp_path / "o"),
                                      "--config", str(config)])
    assert result.exit_code == 2 and "loss_typo" in result.output


def _train_cmd(pairs, out, model, *extra):
    return [sys.executable, "-m", "selfalign.cli", "train", "--pairs", str(pairs), "--out", str(out), "--model", model,
            "--loss", "dpo", "--max-steps", "6", "--per-device-train-batch-size", "1", "--learning-rate", "5e-4",
            "--set", "save_steps=2", "--set", "report_to=[]", "--set", "lora_r=4", *extra]


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "final" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(tmp_path, pairs_file, default_model_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_train_cmd(pairs_file, tmp_path / "straight", "default"), check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(pairs_file, killed, "default"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "killed before the end"
    result = subprocess.run(_train_cmd(pairs_file, killed, "default"), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stdout + result.stderr
    straight, resumed = _adapter(tmp_path / "straight"), _adapter(killed)
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(straight[name], resumed[name], rtol=0, atol=1e-6)


LAUNCHES = {
    "ddp": ({"ACCELERATE_USE_CPU": "1"}, "multi_gpu.yaml"),
    "zero2": ({"DS_ACCELERATOR": "cpu"}, "deepspeed_zero2.yaml"),
    "zero3": ({"DS_ACCELERATOR": "cpu"}, "deepspeed_zero3.yaml"),
}


@pytest.mark.slow
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_two_process_run_ends_with_identical_weights(tmp_path, pairs_file, tiny_model_path, launch):
    if launch != "ddp":
        pytest.importorskip("deepspeed")
    env_extra, config = LAUNCHES[launch]
    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / launch
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" / config),
           "--num_processes", "2", "--mixed_precision", "no", "-m", "selfalign.cli", "train",
           "--pairs", str(pairs_file), "--out", str(out), "--model", tiny_model_path, "--full", "--max-steps", "3",
           "--per-device-train-batch-size", "1", "--learning-rate", "1e-3", "--set", "record_rank_checksums=true",
           "--set", "report_to=[]"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank-{r}-checksum.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2], "accelerate must really start two processes"
    assert ranks[0]["sha256"] == ranks[1]["sha256"], "the ranks' weights diverged"
    from safetensors.torch import load_file

    trained = load_file(str(out / "final" / "model.safetensors"))
    initial = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    assert any((trained[k] - initial[k]).abs().max() > 1e-5 for k in initial), "training changed the weights"
