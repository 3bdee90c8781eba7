"""A small OpenAI-compatible server for a local model: `/v1/chat/completions` (with logprobs) and `/v1/models`.

For judging with a local model through the same HTTP path as a hosted one, and for testing that path for real.
For heavy serving use `vllm serve`, which speaks the same protocol.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class _ModelHost:
    def __init__(self, model: str):
        from selfalign.generation.hf_engine import HFEngine

        self.engine = HFEngine(model)
        self.name = model
        self.lock = threading.Lock()  # one request on the model at a time; HTTP threads queue here

    @torch.no_grad()
    def chat(self, body: dict) -> dict:
        from selfalign.generation import chat_token_ids

        tokenizer, model = self.engine.tokenizer, self.engine.model
        ids = torch.tensor([chat_token_ids(tokenizer, body["messages"])], device=model.device)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        temperature = float(body.get("temperature", 1.0))
        want_logprobs = bool(body.get("logprobs"))
        top_n = int(body.get("top_logprobs") or 0)
        with self.lock:
            if temperature > 0 and body.get("seed") is not None:
                torch.manual_seed(int(body["seed"]))
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                                 top_p=float(body.get("top_p", 1.0)) if temperature > 0 else None,
                                 top_k=0 if temperature > 0 else None,
                                 pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True,
                                 output_logits=want_logprobs)
        new = out.sequences[0, ids.shape[1]:].tolist()
        eos = tokenizer.eos_token_id
        finish = "length"
        if eos in new:
            new, finish = new[:new.index(eos)], "stop"
        choice = {"index": 0, "message": {"role": "assistant", "content": tokenizer.decode(new, skip_special_tokens=True)},
                  "finish_reason": finish, "logprobs": None}
        if want_logprobs:
            content = []
            for position, token in enumerate(new):
                logprobs = out.logits[position][0].float().log_softmax(-1)
                top = torch.topk(logprobs, top_n) if top_n else None
                content.append({
                    "token": tokenizer.decode([token]), "logprob": float(logprobs[token]), "bytes": None,
                    "top_logprobs": [{"token": tokenizer.decode([i]), "logprob": float(v), "bytes": None}
                                     for v, i in zip(top.values.tolist(), top.indices.tolist())] if top else []})
            choice["logprobs"] = {"content": content}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(new),
                          "total_tokens": ids.shape[1] + len(new)}}


def make_server(model: str, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    model_host = _ModelHost(model)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model_host.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):  # noqa: N802
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self._send(200, model_host.chat(body))
            except (KeyError, ValueError, TypeError) as e:
                self._send(400, {"error": {"message": f"bad request: {e}"}})

        def log_message(self, *args):  # quiet: request lines would otherwise go to stderr for every call
            pass

    return ThreadingHTTPServer((host, port), Handler)
