"""A small OpenAI-compatible server for a local model: `/v1/chat/completions` (with logprobs) and `/v1/models`.

For judging with a local model through the same HTTP path as a hosted one, and for testing that path for real.
For heavy serving use `vllm serve`, which speaks the same protocol.
"""

from __future__ import annotations

import errno
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selfalign.errors import SelfAlignError
from selfalign.records import Message


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat request this server honours, with OpenAI's bounds; others are ignored."""

    model_config = ConfigDict(extra="ignore")
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    seed: int | None = None


class BadRequest(ValueError):
    """A request this server must answer with HTTP 400."""


class _ModelHost:
    def __init__(self, model: str):
        from selfalign.generation.hf_engine import HFEngine

        self.engine = HFEngine(model)
        self.name = model
        self.lock = threading.Lock()  # one request on the model at a time; HTTP threads queue here

    @torch.no_grad()
    def chat(self, body: dict) -> dict:
        from selfalign.generation import chat_token_ids

        try:
            request = ChatRequest.model_validate(body)
        except ValidationError as e:
            err = e.errors()[0]
            raise BadRequest(f"field '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None
        tokenizer, model = self.engine.tokenizer, self.engine.model
        prompt = chat_token_ids(tokenizer, request.messages)
        context = self.engine.context_length or 2048
        if len(prompt) >= context:
            raise BadRequest(f"the messages are {len(prompt)} tokens; this model's context is {context}")
        # Capped so that prompt + completion fit the context, as OpenAI-compatible servers do.
        max_tokens = min(request.max_tokens or request.max_completion_tokens or 256, context - len(prompt))
        ids = torch.tensor([prompt], device=model.device)
        temperature, want_logprobs, top_n = request.temperature, request.logprobs, request.top_logprobs
        with self.lock:
            if temperature > 0 and request.seed is not None:
                torch.manual_seed(request.seed)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                                 top_p=request.top_p if temperature > 0 else None,
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
    """The server, bound first (a busy port fails before the model loads), then its model loaded; requests are
    answered once the caller runs `serve_forever`."""
    model_host = None

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
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
                self._send(200, model_host.chat(body))
            except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as e:
                self._send(400, {"error": {"message": f"bad request: {e}", "type": "invalid_request_error"}})
            except Exception as e:  # a bug: answer it anyway, never drop the connection without a response
                self._send(500, {"error": {"message": f"internal error: {type(e).__name__}: {e}",
                                           "type": "server_error"}})

        def log_message(self, *args):  # quiet: request lines would otherwise go to stderr for every call
            pass

    try:
        server = _Server((host, port), Handler)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}"
                         + ("; pass another --port (0 picks a free one)" if e.errno == errno.EADDRINUSE else "")) \
            from None
    try:
        model_host = _ModelHost(model)
    except BaseException:
        server.server_close()
        raise
    return server


class _Server(ThreadingHTTPServer):
    """Many clients at once: judges send `--concurrency` requests together, and the default listen backlog of 5
    reset the rest (25 of 50 simultaneous connections); they now wait in the backlog and then for the model's lock."""

    request_queue_size = 256
    daemon_threads = True


class ServeError(SelfAlignError, OSError):
    """The server cannot start where it was asked to."""
