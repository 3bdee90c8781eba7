import pytest
import torch

from selfalign.generation import SamplingSettings, chat_token_ids, get_engine
from selfalign.records import PromptRecord

PROMPTS = [PromptRecord(id="add", prompt="What is 12 + 30? End with 'The answer is N'."),
           PromptRecord(id="color", messages=[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Name one color."}]),
           PromptRecord(id="long", prompt="Write two sentences about the sea, the sky and the wind at dusk.")]


@pytest.fixture(scope="module")
def engine():
    return get_engine("hf", "default")


def test_n_samples_per_prompt_with_fields(engine):
    samples = engine.generate(PROMPTS, SamplingSettings(n=3, max_new_tokens=24, seed=1))
    assert [s.prompt_id for s in samples] == ["add"] * 3 + ["color"] * 3 + ["long"] * 3
    assert [s.sample_index for s in samples] == [0, 1, 2] * 3
    for s in samples:
        assert 1 <= s.num_tokens <= 24 and s.finish_reason in ("stop", "length")
        assert s.finish_reason == "stop" or s.num_tokens == 24
    assert len({s.text for s in samples if s.prompt_id == "long"}) > 1, "sampling at T=0.8 should vary"


def test_chat_template_is_applied(engine):
    ids = chat_token_ids(engine.tokenizer, PROMPTS[1].messages)
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and text.endswith("<|im_start|>assistant\n")


def test_same_seed_same_samples_other_seed_differs(engine):
    settings = SamplingSettings(n=2, max_new_tokens=20, seed=7)
    first = [s.text for s in engine.generate(PROMPTS, settings)]
    again = [s.text for s in engine.generate(PROMPTS, settings)]
    other = [s.text for s in engine.generate(PROMPTS, settings.model_copy(update={"seed": 8}))]
    assert first == again
    assert first != other


def test_batching_does_not_change_greedy_output(default_model_path):
    small_batches = get_engine("hf", "default", max_batch_tokens=64)  # forces one prompt per batch
    big = get_engine("hf", "default")
    settings = SamplingSettings(temperature=0.0, max_new_tokens=16)
    assert [s.text for s in small_batches.generate(PROMPTS, settings)] == [s.text for s in big.generate(PROMPTS, settings)]


def test_stop_strings_cut_the_text(engine):
    samples = engine.generate(PROMPTS[:1], SamplingSettings(temperature=0.0, max_new_tokens=40, stop=["="]))
    assert "=" not in samples[0].text and samples[0].finish_reason == "stop"


def test_logprobs_match_a_forward_pass(engine):
    prompt = PROMPTS[0]
    sample = engine.generate([prompt], SamplingSettings(n=1, max_new_tokens=12, logprobs=True, seed=3))[0]
    prompt_ids = chat_token_ids(engine.tokenizer, prompt.messages)
    completion_ids = engine.tokenizer(sample.text, add_special_tokens=False)["input_ids"]
    if sample.finish_reason == "stop":
        completion_ids = completion_ids + [engine.tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = engine.model(ids).logits[0, :-1].log_softmax(-1)
    expected = logprobs[len(prompt_ids) - 1:].gather(-1, ids[0, len(prompt_ids):, None]).sum()
    assert sample.logprob == pytest.approx(float(expected), abs=1e-2)


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="--engine 'fast': choose one of hf, vllm, auto"):
        get_engine("fast", "default")


def test_duplicate_prompt_ids_are_refused(engine):
    with pytest.raises(ValueError, match="'x' appears more than once"):
        engine.generate([PromptRecord(id="x", prompt="a"), PromptRecord(id="x", prompt="b")], SamplingSettings())


def test_min_p_one_keeps_only_the_top_token(engine):
    """min_p = 1 drops every token less likely than the most likely one: a hot sample is then the greedy text."""
    greedy = [s.text for s in engine.generate(PROMPTS, SamplingSettings(temperature=0.0, max_new_tokens=16))]
    hot = SamplingSettings(n=2, temperature=1.5, min_p=1.0, max_new_tokens=16, seed=5)
    assert [s.text for s in engine.generate(PROMPTS, hot)] == [t for t in greedy for _ in range(2)]
    free = engine.generate(PROMPTS, hot.model_copy(update={"min_p": 0.0}))
    assert [s.text for s in free] != [t for t in greedy for _ in range(2)]


@pytest.mark.parametrize("bad", [{"min_p": 1.5}, {"min_p": -0.1}, {"top_p": 0.0}, {"top_p": 1.2}])
def test_sampling_knobs_out_of_range_are_refused_everywhere(bad):
    """The generate stage, the engines' settings and the held-out evaluation share one declaration of top_p/min_p."""
    from pydantic import ValidationError

    from selfalign.evaluation.heldout import HeldoutConfig
    from selfalign.generation import GenerationConfig

    for make in (lambda: GenerationConfig(**bad), lambda: SamplingSettings(**bad),
                 lambda: HeldoutConfig(data="held.jsonl", **bad)):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            make()
