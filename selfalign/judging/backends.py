"""Where a judge's verdicts come from: a local model (the policy itself or another), or an OpenAI-compatible endpoint.

Both give greedy text completions of chat messages and, for pairwise judging, the probabilities of the two answer
letters read from the next-token distribution (AlpacaEval 2.0's weighted annotator reads "m"/"M" the same way).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from selfalign.errors import SelfAlignError

log = logging.getLogger(__name__)


class JudgeEndpointError(SelfAlignError, RuntimeError):
    """The judge endpoint gave no usable answer within its time budget, or refused the request outright."""


def letter_probabilities(top: dict[str, float], letters=("A", "B")) -> dict[str, float] | None:
    """Renormalize the mass on the answer letters (tokens like ' A' count for 'A'); None if neither appears."""
    mass = {letter: 0.0 for letter in letters}
    for token, logprob in top.items():
        key = token.strip()
        if key in mass:
            mass[key] += math.exp(logprob)
    total = sum(mass.values())
    return {k: v / total for k, v in mass.items()} if total > 0 else None


class LocalJudge:
    """A transformers model as judge. Pass `model_obj`/`tokenizer` to judge with a policy already in memory."""

    def __init__(self, model: str = "default", model_obj=None, tokenizer=None, device: str = "auto",
                 batch_size: int = 8, max_new_tokens: int = 256):
        from selfalign.generation.hf_engine import HFEngine

        self.engine = HFEngine(model, device=device, model_obj=model_obj, tokenizer=tokenizer)
        self.name = f"local:{model}"
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def complete(self, chats: list[list[dict]]) -> list[str]:
        from selfalign.generation import SamplingSettings
        from selfalign.records import PromptRecord

        prompts = [PromptRecord(id=str(i), messages=chat) for i, chat in enumerate(chats)]
        samples = self.engine.generate(prompts, SamplingSettings(temperature=0.0, max_new_tokens=self.max_new_tokens))
        return [s.text for s in samples]

    @torch.no_grad()
    def letter_probs(self, chats: list[list[dict]], letters=("A", "B")) -> list[dict[str, float] | None]:
        from selfalign.generation import chat_token_ids, left_pad

        tokenizer, model = self.engine.tokenizer, self.engine.model
        letter_ids = {letter: [tokenizer.encode(v, add_special_tokens=False)[0] for v in (letter, " " + letter)]
                      for letter in letters}
        results = []
        for start in range(0, len(chats), self.batch_size):
            encoded = [chat_token_ids(tokenizer, chat) for chat in chats[start:start + self.batch_size]]
            ids, mask = left_pad(encoded, tokenizer.pad_token_id)
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits[:, -1]
            logprobs = logits.float().log_softmax(-1).cpu()
            for row in range(len(encoded)):
                top = {tokenizer.decode([i]): float(logprobs[row, i]) for ids_ in letter_ids.values() for i in ids_}
                results.append(letter_probabilities(top, letters))
        return results


class OpenAIJudge:
    """Any OpenAI-compatible chat endpoint, through the `openai` client.

    Each request has a total time budget (`timeout`, seconds, tries and waits included, every byte of the answer
    read within it): connection failures, time
    outs, HTTP 408/429/5xx and unreadable answers are retried with exponential backoff (1, 2, 4, ... s) until it is
    spent. Then `on_error` decides: "stop" raises JudgeEndpointError (finished prompt groups are kept in OUT.partial),
    "abstain" makes that request an abstention, counted in `stats["endpoint_failures"]`. Other 4xx (a wrong key, an unknown model) stop
    at once. `concurrency` bounds requests in flight; answers are cached in a JSONL file keyed by a hash of the
    request, so a rerun does not pay twice. The API key is read from the environment variable named by `api_key_env`
    and never written anywhere.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 300.0, on_error: str = "stop",
                 cache_path: str | Path | None = None, max_tokens: int = 512, stats: Counter | None = None):
        from openai import OpenAI

        self.model, self.name, self.max_tokens, self.concurrency = model, f"openai:{model}", max_tokens, concurrency
        self.base_url, self.timeout, self.on_error = base_url, timeout, on_error
        self.stats = stats if stats is not None else Counter()  # endpoint_failures: requests counted as abstentions
        self._key = os.environ.get(api_key_env) or ""
        self.client = OpenAI(base_url=base_url, api_key=self._key or "EMPTY", max_retries=0)
        self.cache_path = Path(cache_path) if cache_path else None
        self._cache: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.requests_sent = 0
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row["response"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a line torn by a kill: that request is simply asked again

    def _request(self, body: dict) -> dict:
        # The endpoint is part of the key: the same request to another server (a fixed one after a broken one) is a
        # new question, never answered from the old server's cache.
        key = hashlib.sha256(json.dumps({"endpoint": self.base_url, **body}, sort_keys=True).encode()).hexdigest()
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        response = self._ask(body)
        if response is None:
            return None
        with self._lock:
            self.requests_sent += 1
            self._cache[key] = response
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a", encoding="utf-8") as f:  # one whole line per answer
                    f.write(json.dumps({"key": key, "response": response}) + "\n")
        return response

    def _ask(self, body: dict) -> dict | None:
        """One request within the time budget; None (an abstention) when it is spent and on_error is 'abstain'."""
        import openai

        deadline, wait, tries, last = time.monotonic() + self.timeout, 1.0, 0, ""
        while True:
            remaining = deadline - time.monotonic()
            tries += 1
            try:
                response = self._post_within(body, deadline)
                _check_shape(response)
                return response
            except openai.APIStatusError as e:
                if e.status_code not in (408, 409, 429) and e.status_code < 500:
                    raise JudgeEndpointError(f"judge endpoint {self.base_url} refused the request: HTTP "
                                             f"{e.status_code} ({self._scrub(_short(e))})") from None
                last = f"HTTP {e.status_code} ({self._scrub(_short(e))})"
            except (openai.APIConnectionError, openai.APIResponseValidationError, ValueError, TypeError) as e:
                # APITimeoutError is an APIConnectionError; ValueError covers an answer that is not JSON or of the
                # wrong shape, TypeError one the client library could not read
                last = f"{type(e).__name__}: {self._scrub(_short(e))}"
            remaining = deadline - time.monotonic()
            if remaining <= 0.5:  # too little left for another try
                break
            time.sleep(min(wait, remaining - 0.5))
            wait = min(wait * 2, 30.0)
        with self._lock:
            self.stats["endpoint_failures"] += 1
        message = (f"judge endpoint {self.base_url} gave no answer within --judge-timeout {self.timeout:g}s "
                   f"({tries} {'try' if tries == 1 else 'tries'}; last: {last})")
        if self.on_error == "abstain":
            log.warning("%s: counted as an abstention", message)
            return None
        raise JudgeEndpointError(message + "; finished prompt groups are kept, a rerun continues from them "
                                 "(or pass --on-judge-error abstain)")

    def _post_within(self, body: dict, deadline: float) -> dict:
        """One POST whose answer is read whole before `deadline`: the client's timeout bounds each read, not the
        request, so a server trickling its answer a byte at a time would outlast any budget. The body is read in
        chunks here, the clock checked after each."""
        import openai

        create = self.client.chat.completions.with_streaming_response.create
        with create(**body, timeout=max(deadline - time.monotonic(), 0.1)) as raw:
            data = bytearray()
            for chunk in raw.iter_bytes():
                data += chunk
                if time.monotonic() > deadline:
                    raise openai.APITimeoutError(request=raw.http_request)
                if len(data) > _MAX_ANSWER_BYTES:
                    raise ValueError(f"the answer is longer than {_MAX_ANSWER_BYTES // 2**20} MB")
        return json.loads(bytes(data))

    def _scrub(self, text: str) -> str:
        """Error text without the API key or any bearer token (servers echo them back in 401 answers)."""
        if len(self._key) >= 4:
            text = text.replace(self._key, "***")
        text = re.sub(r"(?i)(bearer\s+)[^\s'\",]+", r"\1***", text)
        return re.sub(r"\bsk-[A-Za-z0-9_-]{6,}", "sk-***", text)

    def _map(self, bodies: list[dict]) -> list[dict]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._request, bodies))

    def complete(self, chats: list[list[dict]]) -> list[str]:
        bodies = [{"model": self.model, "messages": chat, "temperature": 0.0, "max_tokens": self.max_tokens}
                  for chat in chats]
        return [(r["choices"][0]["message"]["content"] or "") if r else "" for r in self._map(bodies)]

    def letter_probs(self, chats: list[list[dict]], letters=("A", "B")) -> list[dict[str, float] | None]:
        bodies = [{"model": self.model, "messages": chat, "temperature": 0.0, "max_tokens": 1, "logprobs": True,
                   "top_logprobs": 20} for chat in chats]
        results = []
        for response in self._map(bodies):
            content = (response["choices"][0].get("logprobs") or {}).get("content") or [] if response else []
            if not content:
                results.append(None)  # the endpoint gives no log-probs: the caller falls back to verdict text
                continue
            top = {t.get("token"): t.get("logprob") for t in content[0].get("top_logprobs") or []
                   if isinstance(t, dict)}
            if not top or not all(isinstance(v, (int, float)) and math.isfinite(v) and v <= 1e-6 for v in top.values()):
                results.append(None)  # impossible log-probs (above 0, not numbers): read the verdict text instead
                continue
            results.append(letter_probabilities(top, letters))
        return results


_MAX_ANSWER_BYTES = 16 * 2**20  # a chat completion is kilobytes; more is a broken or hostile server


def _check_shape(response) -> None:
    """An answer's shape before anything reads it: a list of choices, each a mapping with a message mapping."""
    if not isinstance(response, dict):
        raise ValueError("the answer is not a JSON object")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError("the answer has no list of 'choices'")
    first = choices[0]
    if not isinstance(first, dict) or not isinstance(first.get("message"), dict):
        raise ValueError("the answer's first choice has no 'message'")
    content = first["message"].get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError("the answer's message content is not text")


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
