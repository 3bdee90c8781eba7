"""`AnswerStop` as a vLLM logits processor: registered with every engine, applied to the requests whose
`SamplingParams.extra_args` hold `stop_at_answer` (vLLM's per-request adapter). Imports vLLM, so only the vLLM
engine imports this module."""

from __future__ import annotations

from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from selfalign.generation.answer_stop import AnswerStop

EXTRA_ARG = "stop_at_answer"


class StopAtAnswer(AdapterLogitsProcessor):
    def __init__(self, vllm_config, device, is_pin_memory):
        super().__init__(vllm_config, device, is_pin_memory)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.tokenizer)
        self.rule = AnswerStop(tokenizer, tokenizer.eos_token_id)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes what greedy decoding picks: vLLM must apply it to greedy requests too

    def new_req_logits_processor(self, params):
        if not (params.extra_args or {}).get(EXTRA_ARG):
            return None
        state: dict = {}
        return lambda output_ids, logits: self.rule.apply(state, output_ids, logits)
