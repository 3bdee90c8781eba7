"""Precision: `auto` read from the CPU's flags; bf16 forced on any CPU gives a reference the trainer agrees with and a
step-0 loss equal to fp32's within a stated tolerance; samples stop at their first answer while generated; the base
model's engine jobs come from the content-addressed cache when nothing they depend on changed."""

import json
import math
from pathlib import Path

import pytest
import torch

from selfalign.arithmetic import make_splits
from selfalign.generation import SamplingSettings, get_engine
from selfalign.io import write_jsonl
from selfalign.judging.answers import answer_state
from selfalign.pairs import make_pair
from selfalign.precision import native_bf16, sampling_precision, training_precision
from selfalign.records import PromptRecord, ScoredSample, group_by_prompt
from selfalign.training.config import TrainConfig
from selfalign.training.trainer import train

# /proc/cpuinfo flag lines of three machine classes (abridged)
AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2"
ZEN4 = AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 avx512_vbmi2"
SAPPHIRE_RAPIDS = AVX2 + " avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"


def test_auto_is_bf16_only_where_the_cpu_computes_it():
    assert native_bf16(AVX2) is None
    assert native_bf16(ZEN4) == "avx512_bf16"
    assert native_bf16(SAPPHIRE_RAPIDS) == "amx_bf16"
    assert str(sampling_precision("auto", on_gpu=False, flags=ZEN4)) == "bf16: avx512_bf16"
    assert str(sampling_precision("auto", on_gpu=False, flags=SAPPHIRE_RAPIDS)) == "bf16: amx_bf16"
    assert sampling_precision("auto", on_gpu=False, flags=AVX2).dtype == "float32"
    assert "no native bf16" in str(sampling_precision("auto", on_gpu=False, flags=AVX2))
    assert sampling_precision("bf16", on_gpu=False, flags=AVX2).as_dict() == {"dtype": "bfloat16",
                                                                               "reason": "asked for"}
    assert sampling_precision("fp32", on_gpu=False, flags=ZEN4).dtype == "float32"
    assert sampling_precision("auto", on_gpu=True, flags=AVX2).dtype == "auto"  # vLLM: the checkpoint's dtype
    assert training_precision(None, on_gpu=False, flags=ZEN4).dtype == "bfloat16"
    assert training_precision(None, on_gpu=False, flags=AVX2).dtype == "float32"
    assert training_precision(False, on_gpu=False, flags=ZEN4).dtype == "float32"
    assert training_precision(True, on_gpu=False, flags=AVX2).dtype == "bfloat16"


def test_the_flags_come_from_the_environment_when_set(monkeypatch):
    monkeypatch.setenv("SELFALIGN_CPU_FLAGS", ZEN4)
    assert str(sampling_precision("auto", on_gpu=False)) == "bf16: avx512_bf16"
    monkeypatch.setenv("SELFALIGN_CPU_FLAGS", AVX2)
    assert sampling_precision("auto", on_gpu=False).dtype == "float32"


def test_info_says_which_precision_auto_takes_and_why(monkeypatch):
    from typer.testing import CliRunner

    from selfalign.cli import app

    monkeypatch.setenv("SELFALIGN_CPU_FLAGS", SAPPHIRE_RAPIDS)
    result = CliRunner().invoke(app, ["info"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "bf16: amx_bf16" in result.output


@pytest.mark.parametrize("text, state", [
    ("Maria has 14 apples", None),
    ("14 - 8 = 6. The answer is 6", None),  # the number may still grow (60, 6.5)
    ("14 - 8 = 6. The answer is 6.", "point"),  # a decimal may follow
    ("The answer is 1,", None),  # 1,000 may follow
    ("14 - 8 = 6. The answer is 6.\n", "done"),
    ("The answer is 6. The answer is 7.", "done"),
    ("The answer is 6 apples", "done"),
    ("The answer is 6.5.", "done"),
    ("#### 72\n", "done"),
])
def test_answer_state(text, state):
    assert answer_state(text) == state


@pytest.fixture(scope="module")
def prompts():
    rows, _ = make_splits(8, 0, seed=3)
    return [PromptRecord(**row) for row in rows]


@pytest.fixture(scope="module")
def hf_engine():
    return get_engine("hf", "default")


def test_a_sample_stops_at_its_first_answer_and_is_a_prefix_of_the_full_sample(hf_engine, prompts):
    """Same seed, same batches: the random draws are the same up to the answer, after which only the end may come."""
    settings = SamplingSettings(n=2, temperature=0.5, min_p=0.1, max_new_tokens=96, logprobs=True, seed=1)
    full = hf_engine.generate(prompts, settings)
    stopped = hf_engine.generate(prompts, settings.model_copy(update={"stop_at_answer": True}))
    eos = hf_engine.tokenizer.eos_token_id
    cut = 0
    for long, short in zip(full, stopped):
        assert long.token_ids[:len(short.token_ids) - 1] == short.token_ids[:-1] or short.token_ids == long.token_ids
        if answer_state(short.text) is not None:
            assert short.finish_reason == "stop" and short.token_ids[-1] == eos
            # nothing after the first answer: the judge's cut would leave the text as it is
            assert answer_state(short.text) in ("point", "done") and "answer is" in short.text
            cut += short.num_tokens < long.num_tokens
    assert cut >= 1, "some sample went on after stating its answer (else this test proves nothing)"
    assert sum(s.num_tokens for s in stopped) < sum(s.num_tokens for s in full)


def _pairs_from(samples):
    pairs = []
    for group in group_by_prompt(ScoredSample(**s.model_dump()) for s in samples).values():
        pairs.append(make_pair(group[0], group[1], 1.0, 1.0, 0.0))
    return pairs


@pytest.fixture(scope="module")
def bf16_pairs(prompts, tmp_path_factory):
    """Samples drawn by the model in bf16, with their bf16 log-probs recorded as a sampler would."""
    engine = get_engine("hf", "default", dtype="bfloat16")
    assert str(engine.precision).startswith("bf16")
    samples = engine.generate(prompts[:4], SamplingSettings(n=2, temperature=0.7, max_new_tokens=48, logprobs=True,
                                                            seed=1, stop_at_answer=True))
    path = tmp_path_factory.mktemp("bf16-pairs") / "pairs.jsonl"
    write_jsonl(path, _pairs_from(samples))
    return path


def _step_one(path, out, **settings):
    cfg = TrainConfig(model="default", loss_type="dpo", beta=0.1, max_steps=1, per_device_train_batch_size=4,
                      learning_rate=1e-4, lora_r=4, report_to=[], seed=3, bf16=False, **settings)
    summary = train(cfg, path, out)
    return summary, json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


def test_bf16_sampler_logprobs_are_not_the_fp32_trainers_reference(bf16_pairs, tmp_path):
    """Forced bf16 sampling, fp32 training: the probe sees the disagreement and the trainer computes the reference,
    so DPO's step-0 log-ratio is zero (loss ln 2). Taking the bf16 values anyway (tolerance raised) does not."""
    summary, first = _step_one(bf16_pairs, tmp_path / "checked")
    probe = summary["reference"]["probe"]
    assert probe["used"] is False and probe["max_abs_diff"] > probe["tolerance"]
    assert summary["reference"]["from_sampler"] == 0 and summary["reference"]["computed"] == 4
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # one record probed, three keep their bf16 values
    _, trusted = _step_one(bf16_pairs, tmp_path / "trusted", sampler_reference_tolerance=1e6, sampler_reference_probe=1)
    assert abs(trusted["loss"] - math.log(2)) > 1e-3, "the bf16 reference moves step 0's loss away from ln 2"


def test_fp32_sampler_logprobs_pass_the_probe(hf_engine, prompts, tmp_path):
    samples = hf_engine.generate(prompts[:4], SamplingSettings(n=2, temperature=0.7, max_new_tokens=48,
                                                               logprobs=True, seed=1, stop_at_answer=True))
    write_jsonl(tmp_path / "pairs.jsonl", _pairs_from(samples))
    summary, first = _step_one(tmp_path / "pairs.jsonl", tmp_path / "out")
    probe = summary["reference"]["probe"]
    assert probe["used"] is True and probe["max_abs_diff"] < 2e-3
    assert summary["reference"]["from_sampler"] == 4
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)


def test_bf16_training_step_zero_loss_agrees_with_fp32(bf16_pairs, tmp_path):
    """bf16 autocast (fp32 weights) against fp32 on the same batch at the same weights: ScPO's loss (DPO part ln 2
    weighted, plus the NLL of the chosen answers) within 1%; the summary says which precision ran."""
    common = dict(model="default", loss_type="scpo", alpha=0.5, max_steps=1, per_device_train_batch_size=4,
                  learning_rate=1e-4, lora_r=4, report_to=[], seed=3)
    losses = {}
    for bf16 in (False, True):
        summary = train(TrainConfig(**common, bf16=bf16), bf16_pairs, tmp_path / str(bf16))
        assert summary["precision"]["dtype"] == ("bfloat16" if bf16 else "float32")
        losses[bf16] = json.loads((tmp_path / str(bf16) / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)
    assert losses[True] != losses[False], "bf16 autocast ran (the numbers differ in their last digits)"


def test_base_model_jobs_come_from_the_cache_when_nothing_changed(tiny_model_path, prompts, tmp_path, monkeypatch):
    from selfalign.generation import GenerationConfig
    from selfalign.run.engine_server import EngineRequest, GenerateJob, finished, restore_cached, run_jobs

    monkeypatch.setenv("SELFALIGN_JOB_CACHE", str(tmp_path / "cache"))

    def spec(folder, **update):
        folder.mkdir(exist_ok=True)
        write_jsonl(folder / "prompts.jsonl", prompts[:3])
        config = GenerationConfig(**{"engine": "hf", "n": 2, "max_new_tokens": 8, "temperature": 0.7, "seed": 1,
                                     **update})
        return EngineRequest(model=tiny_model_path, engine="hf", seed=1, cache=True,
                          jobs=[GenerateJob(config=config, prompts=str(folder / "prompts.jsonl"),
                                            out=str(folder / "samples.jsonl"))])

    [first] = run_jobs(spec(tmp_path / "a"))
    assert "cached" not in first
    second = spec(tmp_path / "b")
    restore_cached(second)
    [marker] = [finished(job, second.model) for job in second.jobs]
    assert marker is not None and marker["cached"].startswith(str(tmp_path / "cache"))
    assert (tmp_path / "b" / "samples.jsonl").read_bytes() == (tmp_path / "a" / "samples.jsonl").read_bytes()
    other = spec(tmp_path / "c", temperature=0.9)  # another setting: a miss
    restore_cached(other)
    assert finished(other.jobs[0], other.model) is None
    edited = spec(tmp_path / "d")  # the same settings on other prompt bytes: a miss
    write_jsonl(tmp_path / "d" / "prompts.jsonl", prompts[1:4])
    restore_cached(edited)
    assert finished(edited.jobs[0], edited.model) is None
    (Path(marker["cached"]) / "samples.jsonl").unlink()  # an entry missing a file its job writes: a miss
    partial = spec(tmp_path / "f")
    restore_cached(partial)
    assert finished(partial.jobs[0], partial.model) is None and not (tmp_path / "f" / "samples.jsonl").exists()
    monkeypatch.setenv("SELFALIGN_JOB_CACHE", "off")
    off = spec(tmp_path / "e")
    restore_cached(off)
    assert finished(off.jobs[0], off.model) is None
