"""Real training runs: the default model learns its pairs; every loss trains; resume and multi-process runs agree."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfalign.io import DataFileError, write_jsonl
from selfalign.losses import LOSSES
from selfalign.records import Message, PreferencePair, RankedList, SingleCompletion
from selfalign.training.config import TrainConfig
from selfalign.training.trainer import TrainingError, train

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


def _singles(n=4):
    """Each pair as two single completions: chosen desirable (reward 1.0), rejected undesirable (reward 0.1 i)."""
    rows = []
    for i, pair in enumerate(_pairs(n)):
        rows.append(SingleCompletion(prompt=pair.prompt, prompt_id=pair.prompt_id, completion=pair.chosen, label=True,
                                     reward=1.0))
        rows.append(SingleCompletion(prompt=pair.prompt, prompt_id=pair.prompt_id, completion=pair.rejected,
                                     label=False, reward=0.1 * i))
    return rows


@pytest.fixture()
def singles_file(tmp_path):
    path = tmp_path / "singles.jsonl"
    write_jsonl(path, _singles())
    return path


def _preference_stats(model, pairs, tokenizer, beta):
    """DPO loss and reward accuracy of `model` (a PeftModel; reference = adapter disabled) on the pairs."""
    from selfalign.losses import dpo_loss
    from selfalign.training.data import collate, tokenize_records
    from selfalign.training.forward import sequence_logps

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
    trained = PeftModel.from_pretrained(base, tmp_path / "run").eval()
    loss, accuracy = _preference_stats(trained, _pairs(), load_tokenizer("default"), 0.1)
    assert loss < 0.6 and accuracy >= 0.75, (loss, accuracy)
    assert (tmp_path / "run" / "logs").exists(), "TensorBoard logs"



def _initial_sequence_logps(model_path, records, loss_type):
    """(logps, lengths), (B, S), of the untrained model: the hand computation's only input from the model."""
    from transformers import AutoModelForCausalLM

    from selfalign.models import load_tokenizer
    from selfalign.training.data import collate, tokenize_records
    from selfalign.training.forward import sequence_logps

    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    batch = collate(tokenize_records(tokenizer, records, loss_type, 1024, 512), tokenizer.pad_token_id)
    with torch.no_grad():
        logps, lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    return logps.view(len(records), -1).double(), lengths.view(len(records), -1).double()


def _step1_worked_value(loss_type, cfg, model_path, pairs, lists):
    """Step 1 of a run: policy == reference, so every log-ratio is 0; what is left is worked out here by hand."""
    ln2 = math.log(2)
    if loss_type in ("dpo", "cdpo", "ln_dpo"):
        return ln2  # -(1-ε) log σ(0) - ε log σ(0)
    if loss_type == "ipo":
        return (0 - 1 / (2 * cfg.beta)) ** 2
    if loss_type == "srpo":
        return cfg.alpha * (0.25 + 0.25) + (1 - cfg.alpha) * 1.0
    if loss_type == "lipo":  # Δ = 1 for every better-worse pair: lists of 2 have 1 pair, lists of 3 have 3
        return sum(ln2 * (1 if len(r.completions) == 2 else 3) for r in lists) / len(lists)
    if loss_type == "hinge":
        return 1.0  # max(0, 1 - β·0)
    if loss_type == "kto":
        return 0.5  # r = 0 and z0 = max(0, 0) = 0: λ (1 - σ(0)) with λ_D = λ_U = 1
    if loss_type == "dro":  # ρ = 0 and V(x) = the mean reward (the head starts there): ½(r - r̄)² twice
        rewards = [r.reward for r in _singles()]
        mean = sum(rewards) / len(rewards)
        return sum((r - mean) ** 2 for r in rewards) / len(rewards)
    logps, lengths = _initial_sequence_logps(model_path, pairs, "dpo")
    chosen_avg, rejected_avg = logps[:, 0] / lengths[:, 0], logps[:, 1] / lengths[:, 1]
    if loss_type == "rpo":
        return float((ln2 - cfg.alpha * chosen_avg).mean())
    if loss_type == "scpo":
        w = torch.tensor([p.weight for p in pairs], dtype=torch.float64)
        return float((w * ln2 - cfg.alpha * w * chosen_avg).mean())
    if loss_type == "simpo":
        z = cfg.beta * chosen_avg - cfg.beta * rejected_avg - cfg.simpo_gamma
        return float(torch.nn.functional.softplus(-z).mean())
    raise AssertionError(f"no worked step-1 value for {loss_type}")


@pytest.mark.parametrize("loss_type", sorted(LOSSES))
def test_every_loss_trains_from_its_worked_step1_value(tmp_path, pairs_file, lists_file, singles_file, tiny_model_path,
                                                       loss_type):
    """All records in one batch, so step 1 sees all of them; full finetuning, so the weights must move."""
    from safetensors.torch import load_file

    from selfalign.training.data import read_preferences

    data = {"list": lists_file, "labeled": singles_file, "rewarded": singles_file}.get(LOSSES[loss_type].records,
                                                                                      pairs_file)
    records = read_preferences(data, loss_type)
    cfg = TrainConfig(model=tiny_model_path, loss_type=loss_type, learning_rate=1e-3, max_steps=2,
                      per_device_train_batch_size=len(records), use_peft=False, report_to=[],
                      lipo_lambda_weights=False)
    summary = train(cfg, data, tmp_path / loss_type)
    steps = [json.loads(line) for line in (tmp_path / loss_type / "metrics.jsonl").read_text().splitlines()]
    pairs = read_preferences(pairs_file, "dpo")
    lists = read_preferences(lists_file, "lipo")
    assert steps[0]["loss"] == pytest.approx(_step1_worked_value(loss_type, cfg, tiny_model_path, pairs, lists),
                                             rel=1e-4, abs=1e-5)
    assert summary["steps"] == 2 and steps[1]["loss"] != steps[0]["loss"]
    before = load_file(Path(tiny_model_path) / "model.safetensors")
    after = load_file(Path(summary["output"]) / "model.safetensors")
    moved = [name for name in before if name in after and not torch.equal(before[name], after[name])]
    assert len(moved) >= len(before) // 2, f"only {len(moved)} of {len(before)} tensors changed"


@pytest.mark.parametrize("loss_type", ["kto", "dro"])
def test_short_lora_run_on_single_completions(tmp_path, singles_file, loss_type):
    """KTO and DRO on the default model: the loss falls, the adapter moves, and DRO's value head is saved beside the
    adapter, not in it."""
    from safetensors.torch import load_file

    cfg = TrainConfig(model="default", loss_type=loss_type, learning_rate=2e-4, max_steps=5,
                      per_device_train_batch_size=8, lora_r=8, lora_alpha=16, report_to=[])
    summary = train(cfg, singles_file, tmp_path / loss_type)
    steps = [json.loads(line) for line in (tmp_path / loss_type / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1]["loss"] < 0.9 * steps[0]["loss"], [s["loss"] for s in steps]  # every step sees all 8 records
    final = Path(summary["output"])
    adapter = load_file(final / "adapter_model.safetensors")
    assert any(float(t.abs().max()) > 0 for name, t in adapter.items() if "lora_B" in name), "LoRA B starts at 0"
    assert not any("value_head" in name for name in adapter)
    if loss_type == "dro":
        head = load_file(final / "value_head.safetensors")
        assert set(head) == {"weight", "bias"} and float(head["weight"].abs().max()) > 0, "the head learned"
        assert "value" in steps[-1] and "residual_sq" in steps[-1]
    else:
        assert not (final / "value_head.safetensors").exists()
        assert "kl" in steps[-1] and "rewards/desirable" in steps[-1]


def test_dro_value_head_resumes_from_its_checkpoint(tmp_path, singles_file, tiny_model_path):
    """A run killed after step 2 and rerun ends with the same value head and policy as one that was not killed."""
    from safetensors.torch import load_file

    cfg = TrainConfig(model=tiny_model_path, loss_type="dro", learning_rate=1e-3, max_steps=3, save_steps=1,
                      per_device_train_batch_size=4, lora_r=4, lora_alpha=8, report_to=[])
    out = tmp_path / "run"
    train(cfg, singles_file, out)
    whole = load_file(out / "value_head.safetensors"), load_file(out / "adapter_model.safetensors")
    import shutil

    (out / "selfalign_training.json").unlink()  # as if killed after the step-2 checkpoint
    (out / "metrics.jsonl").write_text("".join((out / "metrics.jsonl").read_text().splitlines(True)[:2]))
    assert (out / "checkpoint-2").is_dir()
    summary = train(cfg, singles_file, out)
    assert summary["steps"] == 3
    resumed = load_file(out / "value_head.safetensors"), load_file(out / "adapter_model.safetensors")
    for before, after in zip(whole, resumed):
        for name in before:
            assert torch.allclose(before[name], after[name], atol=1e-6), name
    assert not torch.equal(whole[0]["weight"], torch.zeros_like(whole[0]["weight"]))


def test_single_completion_without_its_label_or_reward_is_a_clear_error(tmp_path):
    path = tmp_path / "singles.jsonl"
    rows = [r.model_dump() for r in _singles(2)]
    rows[2].pop("label")
    rows[3]["reward"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFileError, match=r"line 3.*label"):
        train(TrainConfig(loss_type="kto", report_to=[]), path, tmp_path / "kto")
    with pytest.raises(DataFileError, match=r"line 4.*reward"):
        train(TrainConfig(loss_type="dro", report_to=[]), path, tmp_path / "dro")
    assert not (tmp_path / "kto").exists() and not (tmp_path / "dro").exists()
    one_prompt = tmp_path / "one.jsonl"
    write_jsonl(one_prompt, _singles(1))
    with pytest.raises(TrainingError, match="other prompts"):
        train(TrainConfig(loss_type="kto", report_to=[]), one_prompt, tmp_path / "kto")


def test_reference_pass_covers_only_the_records_the_steps_reach(tmp_path, pairs_file, tiny_model_path):
    """3 steps of 2 pairs reach 6 of the 8 pairs; step 1 still starts at ln 2 (policy == reference)."""
    from selfalign.training.data import tokenize_records
    from selfalign.training.trainer import examples_in_use

    cfg = TrainConfig(model=tiny_model_path, loss_type="dpo", max_steps=3, per_device_train_batch_size=2,
                      report_to=[], lora_r=4)
    examples = tokenize_records(_tokenizer(tiny_model_path), _pairs(), "dpo", 256, 128)
    used = examples_in_use(examples, cfg, 0, 1, 3)
    assert len(used) == 6 and len(examples_in_use(examples, cfg, 0, 1, 5)) == 8  # step 5 starts a second epoch
    summary = train(cfg, pairs_file, tmp_path / "run")
    assert summary["reference"] == {"from_sampler": 0, "computed": 6, "not_reached": 2}
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and len(steps) == 3


def _tokenizer(path):
    from selfalign.models import load_tokenizer

    return load_tokenizer(path)


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
        train(cfg, pairs_file, tmp_path / str(bf16))
        runs[bf16] = [json.loads(line) for line in (tmp_path / str(bf16) / "metrics.jsonl").read_text().splitlines()]
        adapter = load_file(next((tmp_path / str(bf16)).glob("adapter_model.safetensors")))
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
    with pytest.raises(TrainingError, match="needs a CUDA GPU"):
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


def test_one_override_path_for_training_options(tmp_path, pairs_file):
    from typer.testing import CliRunner

    from selfalign.cli import app

    def run(*args):
        return CliRunner().invoke(app, ["train", "--pairs", str(pairs_file), "--out", str(tmp_path / "o"), *args])

    both = run("--beta", "0.2", "--set", "beta=0.3")
    assert both.exit_code == 2 and "--beta and --set beta=... both given: use one" in both.output
    bad_yaml = run("--set", "beta=[1")
    assert bad_yaml.exit_code == 2 and "--set beta: value '[1' is not valid YAML" in bad_yaml.output
    config = tmp_path / "list.yaml"
    config.write_text("- beta\n- 0.1\n")
    not_mapping = run("--config", str(config))
    assert not_mapping.exit_code == 2 and "list.yaml: expected a mapping of fields, got list" in not_mapping.output
    unknown = run("--set", "betta=0.1")
    assert unknown.exit_code == 2 and "--set betta 0.1: Extra inputs are not permitted" in unknown.output
    assert "Traceback" not in both.output + bad_yaml.output + not_mapping.output + unknown.output
    assert not (tmp_path / "o").exists()


def test_output_folder_of_another_run_is_refused_not_resumed(tmp_path, pairs_file, tiny_model_path):
    """A second run into the same --out with another loss must not continue the first run's checkpoint."""
    base = dict(model=tiny_model_path, learning_rate=1e-3, max_steps=2, per_device_train_batch_size=4,
                use_peft=False, report_to=[], save_steps=1)
    out = tmp_path / "run"
    train(TrainConfig(loss_type="dpo", **base), pairs_file, out)
    metrics_before, config_before = (out / "metrics.jsonl").read_text(), (out / "train_config.json").read_text()
    with pytest.raises(TrainingError, match=r"holds a run with other settings \(loss_type: 'dpo' there, 'ipo' now"):
        train(TrainConfig(loss_type="ipo", **base), pairs_file, out)
    other_pairs = tmp_path / "other.jsonl"
    write_jsonl(other_pairs, _pairs(4))
    with pytest.raises(TrainingError, match="holds a run on other data"):
        train(TrainConfig(loss_type="dpo", **base), other_pairs, out)
    assert (out / "metrics.jsonl").read_text() == metrics_before, "a refused run must not touch the folder"
    assert (out / "train_config.json").read_text() == config_before
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a"}\n')
    with pytest.raises(DataFileError, match="bad.jsonl, line 1, field 'rejected'"):
        train(TrainConfig(loss_type="ipo", **base), bad, out)
    assert (out / "train_config.json").read_text() == config_before, "bad input must not overwrite the config"
    summary = train(TrainConfig(loss_type="ipo", **base), pairs_file, out, force=True)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and [m["step"] for m in steps] == [1, 2]
    assert steps[0]["loss"] == pytest.approx(25.0, rel=1e-4), "IPO from the start, not DPO's checkpoint"


def _train_cmd(pairs, out, model, *extra):
    return [sys.executable, "-m", "selfalign.cli", "train", "--pairs", str(pairs), "--out", str(out), "--model", model,
            "--loss", "dpo", "--max-steps", "6", "--per-device-train-batch-size", "1", "--learning-rate", "5e-4",
            "--set", "save_steps=2", "--set", "report_to=[]", "--set", "lora_r=4", *extra]


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(tmp_path, pairs_file, default_model_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_train_cmd(pairs_file, tmp_path / "straight", "default"), check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(pairs_file, killed, "default"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "selfalign_training.json").exists(), "killed before the end"
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


def _extensions_with_stale_lock(root: Path) -> Path:
    """A build folder holding the ops already compiled (linked, so nothing recompiles) and a lock left an hour ago."""
    from selfalign.training.build_locks import extensions_root

    (root / "stale_op").mkdir(parents=True)
    if extensions_root().is_dir():
        for built in extensions_root().iterdir():
            if built.is_dir() and not (built / "lock").exists():
                (root / built.name).symlink_to(built)
    lock = root / "stale_op" / "lock"
    lock.touch()
    os.utime(lock, (time.time() - 3600,) * 2)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_two_process_run_ends_with_identical_weights(tmp_path, pairs_file, tiny_model_path, launch):
    if launch != "ddp":
        pytest.importorskip("deepspeed")
    env_extra, config = LAUNCHES[launch]
    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if launch == "zero2":  # a stale build lock of another op must be named on stderr (build_locks.py)
        env["TORCH_EXTENSIONS_DIR"] = str(_extensions_with_stale_lock(tmp_path / "torch_extensions"))
    out = tmp_path / launch
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" / config),
           "--num_processes", "2", "--mixed_precision", "no", "-m", "selfalign.cli", "train",
           "--pairs", str(pairs_file), "--out", str(out), "--model", tiny_model_path, "--full", "--max-steps", "3",
           "--per-device-train-batch-size", "1", "--learning-rate", "1e-3", "--set", "record_rank_checksums=true",
           "--set", "report_to=[]"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    if launch == "zero2":
        assert "A build lock" in result.stderr and "'stale_op'" in result.stderr, result.stderr[-3000:]
    if launch == "zero3":  # zero3_init_flag: each rank loaded only its shard, never the whole model
        import re

        held = re.findall(r"partitioned while loading \(zero.Init\); this rank holds (\d+) of (\d+)", result.stderr)
        assert len(held) == 2 and all(int(mine) < int(total) for mine, total in held), result.stderr[-3000:]
    ranks = [json.loads((out / f"rank-{r}-checksum.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2], "accelerate must really start two processes"
    assert ranks[0]["sha256"] == ranks[1]["sha256"], "the ranks' weights diverged"
    from safetensors.torch import load_file

    trained = load_file(str(out / "model.safetensors"))
    initial = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    assert any((trained[k] - initial[k]).abs().max() > 1e-5 for k in initial), "training changed the weights"


def test_kto_kl_column_runs_without_autograd_and_equals_the_joint_forward(tiny_model_path):
    from transformers import AutoModelForCausalLM

    from selfalign.training.data import collate, tokenize_records
    from selfalign.training.forward import batch_logps
    from selfalign.training.trainer import policy_logps

    cfg = TrainConfig(model=tiny_model_path, loss_type="kto", report_to=[])
    chunk = tokenize_records(_tokenizer(tiny_model_path), _singles(3), "kto", 256, 128)
    pad = _tokenizer(tiny_model_path).pad_token_id
    batch = collate(chunk, pad)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    split, lengths = policy_logps(model, chunk, batch, pad, "cpu", cfg)
    joint, joint_lengths = batch_logps(model, batch, "cpu")
    assert torch.allclose(split, joint.view(-1, 2), atol=2e-4) and torch.equal(lengths, joint_lengths.view(-1, 2))
    params = [p for p in model.parameters() if p.requires_grad]
    from_kl = torch.autograd.grad(split[:, 1].sum(), params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in from_kl), "the KL column carries no graph"
    from_completions = torch.autograd.grad(split[:, 0].sum(), params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in from_completions)


def test_fewer_records_than_one_batch_train_in_a_smaller_batch(tmp_path, tiny_model_path, caplog):
    """As TRL does with a partial batch: 3 records under a batch size of 4 train (3 per step), with a warning."""
    path = tmp_path / "three.jsonl"
    write_jsonl(path, _pairs(3))
    cfg = TrainConfig(model=tiny_model_path, loss_type="dpo", learning_rate=1e-3, max_steps=2,
                      per_device_train_batch_size=4, report_to=[])
    with caplog.at_level("WARNING"):
        summary = train(cfg, path, tmp_path / "out")
    assert summary["steps"] == 2
    assert "fewer than one batch" in caplog.text and "batches of 3 x 1" in caplog.text
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(math.isfinite(s["loss"]) for s in steps)


@pytest.mark.parametrize("change, first_bad_step", [({"beta": float("inf")}, 1), ({"learning_rate": 1e9}, None)])
def test_training_stops_at_the_first_non_finite_loss(tmp_path, pairs_file, tiny_model_path, change, first_bad_step):
    """NaN or exploding training ends with the step named, checkpoints before it kept, and no final weights."""
    settings = {"learning_rate": 1e-3, **change}
    cfg = TrainConfig(model=tiny_model_path, loss_type="dpo", max_steps=6, save_steps=1, per_device_train_batch_size=2,
                      use_peft=False, report_to=[], **settings)
    with pytest.raises(TrainingError, match=r"step (\d+): the (loss|gradient norm) is .* \(not finite\)") as stopped:
        train(cfg, pairs_file, tmp_path / "out")
    step = int(str(stopped.value).split("step ")[1].split(":")[0])
    if first_bad_step is not None:
        assert step == first_bad_step and "no checkpoint was written" in str(stopped.value)
    else:
        assert step > 1 and f"checkpoint-{step - 1}" in str(stopped.value)
        from safetensors.torch import load_file

        kept = load_file(next((tmp_path / "out" / f"checkpoint-{step - 1}").rglob("*.safetensors")))
        assert all(torch.isfinite(t).all() for t in kept.values()), "the checkpoint named is finite"
    assert not (tmp_path / "out" / "selfalign_training.json").exists()


def test_pairs_whose_chosen_equals_rejected_are_dropped_and_counted(tmp_path, tiny_model_path, caplog):
    pairs = _pairs(4)
    pairs[1] = pairs[1].model_copy(update={"rejected": pairs[1].chosen})
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, pairs)
    cfg = TrainConfig(model=tiny_model_path, loss_type="dpo", max_steps=1, per_device_train_batch_size=3, report_to=[])
    with caplog.at_level("WARNING"):
        summary = train(cfg, path, tmp_path / "out")
    assert summary["records"] == 3 and summary["dropped_identical_pairs"] == 1
    assert "1 pairs whose chosen equals their rejected were dropped" in caplog.text
    only_identical = tmp_path / "same.jsonl"
    write_jsonl(only_identical, [pairs[1]])
    with pytest.raises(TrainingError, match="no preference records"):
        train(cfg, only_identical, tmp_path / "out2")
