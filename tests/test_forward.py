"""The shared-prompt forward (each group's prompt once, its key/value cache reused by the group's completions)
against the plain forward (one row per sequence): same log-probs and same gradients, for pairs, ranked lists of
different lengths and SRPO's six sequences over three prompts."""

import pytest
import torch

from selfalign.records import Message, PreferencePair, RankedList
from selfalign.training.data import collate, tokenize_records
from selfalign.training.forward import sequence_logps, shared_prompt_logps


def _pairs():
    rows = []
    for i, (question, good, bad) in enumerate([
            ("What is 3 + 4?", "3 + 4 = 7. The answer is 7.", "The answer is 12."),
            ("Tom has 12 apples and gives away 5. How many are left? Think step by step.",
             "12 - 5 = 7. The answer is 7.", "He has 17 left, so the answer is 17, I think."),
            ("Name a color.", "Blue.", "The sky at night is often described as being very dark.")]):
        rows.append(PreferencePair(prompt=[Message(role="user", content=question)], prompt_id=str(i),
                                   chosen=[Message(role="assistant", content=good)],
                                   rejected=[Message(role="assistant", content=bad)]))
    return rows


def _lists():
    pairs = _pairs()
    extra = [Message(role="assistant", content="Maybe 12? Or 13.")]
    return [RankedList(prompt=pairs[0].prompt, prompt_id="a", completions=[pairs[0].chosen, extra, pairs[0].rejected],
                       scores=[2.0, 1.0, 0.0]),
            RankedList(prompt=pairs[1].prompt, prompt_id="b", completions=[pairs[1].chosen, pairs[1].rejected],
                       scores=[1.0, 0.0])]  # shorter: padded in the batch, masked


def _model(path, lora: bool):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                                 init_lora_weights=False))  # non-zero B: the adapter changes outputs
    return model.train()


def _both_paths(model, batch):
    """(log-probs, lengths, gradients) from each path, for the same scalar objective."""
    results = []
    for path in ("plain", "shared"):
        model.zero_grad()
        if path == "plain":
            logps, lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        else:
            logps, lengths = shared_prompt_logps(model, batch, "cpu")
        weights = torch.linspace(1.0, -1.0, logps.numel())  # every row's gradient counts, with its own sign
        (logps * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        results.append((logps.detach(), lengths, grads))
    return results


@pytest.mark.parametrize("kind", ["pairs", "lists", "srpo"])
@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_equals_plain_forward_tiny(tiny_model_path, kind, lora):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    records, loss_type = {"pairs": (_pairs(), "dpo"), "lists": (_lists(), "lipo"), "srpo": (_pairs(), "srpo")}[kind]
    batch = collate(tokenize_records(tokenizer, records, loss_type, 512, 256), tokenizer.pad_token_id)
    distinct_prompts = {"pairs": 3, "lists": 2, "srpo": 9}[kind]
    assert batch["prompt_input_ids"].shape[0] == distinct_prompts < batch["input_ids"].shape[0]
    (plain, plain_len, plain_grads), (shared, shared_len, shared_grads) = _both_paths(_model(tiny_model_path, lora),
                                                                                     batch)
    assert torch.equal(plain_len, shared_len)
    torch.testing.assert_close(shared, plain, atol=1e-4, rtol=1e-5)
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        # float32 rounding is relative to the terms summed, not to each entry: the tied embedding's gradient adds the
        # LM head's (entries up to ~9), and on AVX2 kernels one entry of 3.1 million differed by 1.8e-5 (2e-6 of the
        # tensor's scale) between the two summation orders. The bound scales with the tensor's largest entry.
        scale = max(1.0, float(grad.abs().max()))
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_shared_prompt_equals_plain_forward_default_model(default_model_path):
    """The real 135M model, LoRA as the default recipe trains it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    batch = collate(tokenize_records(tokenizer, _pairs(), "dpo", 512, 256), tokenizer.pad_token_id)
    (plain, _, plain_grads), (shared, _, shared_grads) = _both_paths(_model(default_model_path, True), batch)
    torch.testing.assert_close(shared, plain, atol=2e-4, rtol=1e-5)
    worst = max(float((shared_grads[n] - g).abs().max() / g.abs().max().clamp(min=1e-12))
                for n, g in plain_grads.items())
    assert worst < 1e-3, worst
