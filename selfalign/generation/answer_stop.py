"""Stop a sample at its first stated answer while it is generated (`stop_at_answer`), in both engines.

What a small model writes after "The answer is 14." (a second answer, more steps, rambling to the token limit) is
read by nobody: the execution judge cuts it (`cut_at_answer`) and the evaluation reads the first answer. Generating
it cost two thirds of the default run's sampling tokens. A stop string cannot say "a number, then anything but a
digit", so a logits processor does: once the first answer's number is complete (`answers.answer_state` is `done`)
only the end-of-sequence token may follow; right after "14." or "14," only a digit (a decimal) or the end may. The
end token is then part of the sample, as when the model stops by itself, so the sample's recorded log-prob (taken
from the raw logits, before any processor) is still that of its own tokens under the model.
"""

from __future__ import annotations

import torch

from selfalign.judging.answers import answer_state


class AnswerStop:
    """The rule, on one row of logits. `state` is a request's running text (a dict this object fills)."""

    def __init__(self, tokenizer, eos_token_id: int):
        self.tokenizer, self.eos = tokenizer, eos_token_id
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # A byte-level BPE piece that starts with a digit continues a number ("Ġ5" starts a new word: it does not)
        self.digit_start = torch.tensor([bool(p) and p[0].isdigit() for p in pieces])
        self._texts: dict[int, str] = {}

    def _text_of(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self.tokenizer.decode([token], skip_special_tokens=True)
        return text

    def apply(self, state: dict, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        seen = state.get("seen", 0)
        if seen < len(output_ids):
            state["text"] = state.get("text", "") + "".join(self._text_of(t) for t in output_ids[seen:])
            state["seen"] = len(output_ids)
        found = answer_state(state.get("text", ""))
        if found is None:
            return logits
        allowed = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        if found == "point":
            width = min(len(self.digit_start), logits.shape[-1])
            allowed[:width] = self.digit_start[:width].to(logits.device)
        allowed[self.eos] = True
        return logits.masked_fill(~allowed, float("-inf"))


def hf_logits_processor(tokenizer, eos_token_id: int, prompt_width: int):
    """The rule as a transformers `LogitsProcessor` over a batch (rows are prompt + new tokens, left padded)."""
    from transformers import LogitsProcessor

    rule = AnswerStop(tokenizer, eos_token_id)

    class StopAtAnswer(LogitsProcessor):
        def __init__(self):
            self.states: dict[int, dict] = {}

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            for row in range(input_ids.shape[0]):
                new = input_ids[row, prompt_width:].tolist()
                scores[row] = rule.apply(self.states.setdefault(row, {}), new, scores[row])
            return scores

    return StopAtAnswer()
