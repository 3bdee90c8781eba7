"""Bad input and faults, as a hostile but realistic user meets them: each ends in one clear line and exit status 2
(no traceback), touches nothing already written, and never blends one run's data into another's.

Cases elsewhere: another run's training folder (test_train), an empty or duplicate-id prompts file and vote_threshold
above n in a recipe (test_loop), `--set 'beta=[1'`, a non-mapping --config (test_train), a one-entry LiPO list
(test_data_in)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from selfalign.cli import app
from selfalign.io import write_jsonl
from selfalign.records import Sample

runner = CliRunner()


def _invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    error = [line for line in lines if line.startswith("error: ")]
    assert len(error) == 1, result.output
    for fragment in fragments:
        assert fragment in error[0], error[0]


def _samples(path, texts, prompt_id="q", question="What is 2 + 2?"):
    write_jsonl(path, [Sample(prompt_id=prompt_id, sample_index=i, messages=[{"role": "user", "content": question}],
                              text=t, num_tokens=3, finish_reason="stop") for i, t in enumerate(texts)])
    return path


# ---- silent mix-ups and data loss ----------------------------------------------------------------------------------

def test_judge_partial_from_other_samples_is_refused_not_merged(tmp_path):
    """A killed judge run leaves OUT.partial; judging a regenerated samples file into the same OUT must not reuse it."""
    out = tmp_path / "scored.jsonl"
    old = _samples(tmp_path / "old.jsonl", ["The answer is 4.", "The answer is 5."])
    from selfalign.io import read_jsonl
    from selfalign.judging.self_consistency import score_self_consistency
    from selfalign.io import fingerprint

    # what a killed run on the old samples leaves behind: header + one finished group
    old_records = read_jsonl(old, Sample)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps({"fingerprint": fingerprint({}, old_records)}) + "\n" + json.dumps(
        {"prompt_id": "q", "samples": [s.model_dump(mode="json") for s in score_self_consistency(old_records)]}) + "\n")
    new = _samples(tmp_path / "new.jsonl", ["The answer is 7.", "The answer is 7."])
    refused = _invoke("judge", "--samples", new, "--out", out)
    _one_line_error(refused, "scored.jsonl.partial holds scores of other samples or judge settings", "--force")
    assert not out.exists() and partial.exists(), "nothing written, the old partial kept for the user to decide"
    done = _invoke("judge", "--samples", new, "--out", out, "--force")
    assert done.exit_code == 0, done.output
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["The answer is 7."] * 2


def test_judge_resumes_its_own_partial(tmp_path):
    samples = _samples(tmp_path / "s.jsonl", ["The answer is 4.", "The answer is 4.", "The answer is 5."])
    from selfalign.io import read_jsonl
    from selfalign.judging.scorers import JudgeConfig
    from selfalign.io import fingerprint

    out = tmp_path / "scored.jsonl"
    records = read_jsonl(samples, Sample)
    settings = JudgeConfig().resume_settings()
    canned = [{**s.model_dump(mode="json"), "score": 0.123, "scorer": "from-partial"} for s in records]
    out.with_name(out.name + ".partial").write_text(json.dumps({"fingerprint": fingerprint(settings, records)}) +
                                                    "\n" + json.dumps({"prompt_id": "q", "samples": canned}) + "\n")
    assert _invoke("judge", "--samples", samples, "--out", out).exit_code == 0
    assert {json.loads(line)["scorer"] for line in out.read_text().splitlines()} == {"from-partial"}


@pytest.mark.parametrize("command", ["generate", "judge", "build-pairs"])
def test_empty_input_is_an_error_that_keeps_the_old_output(tmp_path, command):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    flag = {"generate": "--prompts", "judge": "--samples", "build-pairs": "--scored"}[command]
    extra = ["--engine", "hf"] if command == "generate" else []
    result = _invoke(command, flag, empty, "--out", out, *extra)
    _one_line_error(result, "empty.jsonl: holds no", "nothing was written")
    assert out.read_text() == "precious\n"


def test_duplicate_samples_are_refused_not_counted_twice(tmp_path):
    samples = _samples(tmp_path / "s.jsonl", ["The answer is 4.", "The answer is 5."])
    samples.write_text(samples.read_text() + samples.read_text().splitlines()[1] + "\n")  # sample 1 again
    result = _invoke("judge", "--samples", samples, "--out", tmp_path / "o.jsonl")
    _one_line_error(result, "s.jsonl, field 'sample_index': sample 1 of prompt 'q' appears twice (records 2 and 3)")


def test_one_run_folder_has_one_running_process(tmp_path):
    from selfalign.run.lock import RunLockedError, run_folder_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                   "started": "then"}))
        with pytest.raises(RunLockedError, match=f"in use by another selfalign run \\(PID {holder.pid}"):
            with run_folder_lock(run_dir):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_folder_lock(run_dir):  # the holder is gone: a stale lock is taken over
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
    assert not (run_dir / ".lock").exists()


def test_second_selfalign_run_on_a_busy_folder_is_refused(tmp_path):
    """Two real `selfalign run` processes: the second is refused while the first works, and touches nothing."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_loop import _recipe

    recipe, run_dir = _recipe(tmp_path), tmp_path / "run"
    cmd = [sys.executable, "-m", "selfalign.cli", "run", str(recipe), "--out", str(run_dir)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run_dir / ".lock").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        manifest_before = (run_dir / "manifest.json").read_text() if (run_dir / "manifest.json").exists() else None
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "is in use by another selfalign run (PID" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        if manifest_before is not None:
            assert json.loads((run_dir / "manifest.json").read_text())["recipe_sha256"]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


# ---- tracebacks where a clear error belongs -----------------------------------------------------------------------

def _broken_vllm(tmp_path) -> dict:
    package = tmp_path / "broken" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('vllm._C: undefined symbol (a broken build)')\n")
    return {**os.environ, "PYTHONPATH": f"{tmp_path / 'broken'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_engine_auto_with_a_broken_vllm_falls_back_and_vllm_says_why(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Say hi."}\n')
    env = _broken_vllm(tmp_path)
    base = [sys.executable, "-m", "selfalign.cli", "generate", "--prompts", str(prompts), "--n", "1",
            "--max-new-tokens", "4", "--seed", "3"]
    auto = subprocess.run(base + ["--engine", "auto", "--out", str(tmp_path / "a.jsonl")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert auto.returncode == 0, auto.stderr
    assert "vllm is installed but does not import (RuntimeError" in auto.stderr and "falling back" in auto.stderr
    assert "with hf" in auto.stderr
    explicit = subprocess.run(base + ["--engine", "vllm", "--out", str(tmp_path / "v.jsonl")], capture_output=True,
                              text=True, env=env, timeout=300)
    assert explicit.returncode == 2 and "error: engine 'vllm': vllm is installed but does not import" in explicit.stderr
    assert "Traceback" not in explicit.stderr


def test_input_path_that_is_a_folder(tmp_path):
    result = _invoke("generate", "--prompts", tmp_path, "--out", tmp_path / "o.jsonl", "--engine", "hf")
    _one_line_error(result, f"{tmp_path}: is a folder, not a JSONL file")


def test_input_with_bad_bytes_names_the_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    result = _invoke("generate", "--prompts", prompts, "--out", tmp_path / "o.jsonl", "--engine", "hf")
    _one_line_error(result, "p.jsonl, line 2: not UTF-8 text (byte 16 of the line)")


def test_output_that_is_a_folder_or_under_a_file(tmp_path):
    scored = _samples(tmp_path / "s.jsonl", ["The answer is 4."])
    judged = _invoke("judge", "--samples", scored, "--out", tmp_path / "scored.jsonl")
    assert judged.exit_code == 0
    (tmp_path / "pairs_dir").mkdir()
    result = _invoke("build-pairs", "--scored", tmp_path / "scored.jsonl", "--out", tmp_path / "pairs_dir")
    _one_line_error(result, "pairs_dir: is a folder; give a file path")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = _invoke("export", tmp_path, "--out", blocker / "merged")
    _one_line_error(result, f"cannot be created, {blocker} is a file, not a folder")


def test_truncated_adapter_and_pickle_only_model(tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfalign.training.config import TrainConfig
    from selfalign.training.trainer import train
    from test_train import _pairs  # noqa: E402  (shared fixture data)

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, _pairs(4))
    train(TrainConfig(model=tiny_model_path, max_steps=1, per_device_train_batch_size=2, lora_r=4, report_to=[]),
          pairs, tmp_path / "run")
    adapter = tmp_path / "run" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    result = _invoke("export", tmp_path / "run", "--out", tmp_path / "merged")
    _one_line_error(result, "trained weights in", "could not be loaded")
    assert not (tmp_path / "merged").exists()

    pickled = tmp_path / "pickled"  # the layout of an old hub checkpoint: config + pytorch_model.bin, no safetensors
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(pickled)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    result = _invoke("generate", "--prompts", prompts, "--out", tmp_path / "o.jsonl", "--engine", "hf", "--model",
                     pickled)
    _one_line_error(result, "holds only pickle weights (.bin/.pt); selfalign loads safetensors only")


sys.path.insert(0, str(Path(__file__).parent))


class _LocalEndpoint:
    """A real HTTP server on localhost; `respond()` gives each POST's (status, body bytes, seconds to wait first).
    With `trickle`, the body goes out one byte every `trickle` seconds after prompt headers."""

    def __init__(self, respond, trickle: float = 0.0):
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests += 1
                status, data, delay = respond()
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    for start in range(0, len(data), 1 if trickle else max(len(data), 1)):
                        self.wfile.write(data[start:start + (1 if trickle else len(data))])
                        self.wfile.flush()
                        time.sleep(trickle)
                except OSError:
                    pass  # the client gave up

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _FaultyEndpoint(_LocalEndpoint):
    """Fails the way endpoints do; a hang lasts far past the judge's budget, bounded so the server thread ends."""

    def __init__(self, mode: str):
        status, data = {"500": (500, b'{"error": {"message": "overloaded"}}'), "badjson": (200, b"<html>not json</html>"),
                        "hang": (200, b"{}")}[mode]
        super().__init__(lambda: (status, data, 15 if mode == "hang" else 0))


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("mode, last_error", [("nothing-listening", "APIConnectionError"), ("500", "HTTP 500"),
                                              ("badjson", "JSONDecodeError"), ("hang", "APITimeoutError")])
def test_judge_endpoint_faults_stop_or_abstain_within_the_budget(tmp_path, mode, last_error):
    endpoint = None if mode == "nothing-listening" else _FaultyEndpoint(mode)
    url = endpoint.url if endpoint else _closed_port_url()
    samples = _samples(tmp_path / "s.jsonl", ["4", "5"])
    base = ["judge", "--samples", samples, "--scorer", "llm-judge", "--mode", "pointwise", "--judge-model", "m",
            "--judge-base-url", url, "--judge-timeout", "2", "--concurrency", "2"]
    try:
        started = time.monotonic()
        stopped = _invoke(*base, "--out", tmp_path / "stop.jsonl")
        _one_line_error(stopped, f"judge endpoint {url} gave no answer within --judge-timeout 2s", last_error,
                        "--on-judge-error abstain")
        abstained = _invoke(*base, "--out", tmp_path / "abstain.jsonl", "--on-judge-error", "abstain")
        elapsed = time.monotonic() - started
        assert abstained.exit_code == 0, abstained.output
        report = json.loads((tmp_path / "abstain.report.json").read_text())
        assert report["abstained"] == 2 and report["endpoint_failures"] == 2 and report["scored"] == 0
        assert elapsed < 60, f"two bounded runs took {elapsed:.0f}s"  # a hang is not bounded by 120 s x 6 tries
        if endpoint and mode != "hang":
            assert endpoint.requests >= 4, "retried within the budget"
    finally:
        if endpoint:
            endpoint.close()


def test_judge_endpoint_that_refuses_stops_at_once(tmp_path, server):
    """A 4xx other than 408/429 (here: an unknown route, HTTP 404) is not retried: it cannot get better."""
    samples = _samples(tmp_path / "s.jsonl", ["4"])
    result = _invoke("judge", "--samples", samples, "--scorer", "llm-judge", "--mode", "pointwise", "--judge-model",
                     "m", "--judge-base-url", server.replace("/v1", "/nope"), "--out", tmp_path / "o.jsonl")
    _one_line_error(result, "refused the request: HTTP 404")


@pytest.fixture(scope="module")
def server():
    from selfalign.serve import make_server

    srv = make_server("default", "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/v1"
    srv.shutdown()
    srv.server_close()


def _post(url: str, body) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/chat/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("body, fragment", [
    ({"messages": "hi"}, "field 'messages'"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 1e9}, "field 'top_logprobs'"),
    ({"messages": []}, "field 'messages'"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "field 'messages.0.role'"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, "field 'max_tokens'"),
    (b"{not json", "bad request"),
    ([1, 2], "the body must be a JSON object"),
])
def test_server_answers_every_bad_request_with_a_400(server, body, fragment):
    status, payload = _post(server, body)
    assert status == 400 and fragment in payload["error"]["message"], payload


def test_server_caps_max_tokens_by_the_context(server):
    status, payload = _post(server, {"messages": [{"role": "user", "content": "Count to five."}],
                                     "max_tokens": 10**9, "temperature": 0})
    assert status == 200 and payload["usage"]["total_tokens"] <= 8192
    too_long = {"messages": [{"role": "user", "content": "word " * 9000}]}
    status, payload = _post(server, too_long)
    assert status == 400 and "this model's context is 8192" in payload["error"]["message"]


def test_duplicate_prompt_ids_fail_before_any_model_loads(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    result = _invoke("generate", "--prompts", prompts, "--out", tmp_path / "o.jsonl", "--engine", "hf", "--model",
                     tmp_path / "no-such-model")  # a model error would come first if the model were loaded first
    _one_line_error(result, "p.jsonl: prompt id 'a' appears more than once (prompts 1 and 2)")


# ---- checks that came too late ------------------------------------------------------------------------------------

def test_prompt_longer_than_the_context_is_refused_or_cut_before_generation(tmp_path):
    """The 5 MB prompt that took 18.7 GB: refused before generation, or cut to fit with --truncate-prompts."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "long", "prompt": "word " * 200_000 + "What is 2 + 2?"}) + "\n")
    base = ["generate", "--prompts", prompts, "--engine", "hf", "--n", "1", "--max-new-tokens", "8"]
    refused = _invoke(*base, "--out", tmp_path / "o.jsonl")
    _one_line_error(refused, "prompt 'long' is 2000", "tokens; the model's context of 8192 tokens leaves 8184",
                    "--truncate-prompts")
    assert not (tmp_path / "o.jsonl").exists()
    from selfalign.generation import SamplingSettings, fit_to_context
    from selfalign.io import read_jsonl
    from selfalign.models import load_tokenizer
    from selfalign.records import PromptRecord

    tokenizer = load_tokenizer("default")
    (cut,), (cut_ids,) = fit_to_context(tokenizer, read_jsonl(prompts, PromptRecord), 256,
                                        SamplingSettings(max_new_tokens=8, truncate_prompts=True))
    from selfalign.generation import chat_token_ids

    assert cut.id == "long" and cut.messages[-1].content.endswith("What is 2 + 2?")
    assert 200 < len(chat_token_ids(tokenizer, cut.messages)) <= 248
    assert cut_ids == chat_token_ids(tokenizer, cut.messages), "the ids the engines feed are the cut prompt's"


def test_recipe_with_a_missing_hub_model_fails_before_the_run_folder(tmp_path, cli_env):
    from test_loop import _recipe

    recipe = _recipe(tmp_path, model="no-such-org/no-such-model")
    env = {**cli_env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "selfalign.cli", "run", str(recipe), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "field 'model': model 'no-such-org/no-such-model': could not be loaded" in \
        result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_build_pairs_vote_threshold_above_n(tmp_path):
    scored = tmp_path / "scored.jsonl"
    _invoke("judge", "--samples", _samples(tmp_path / "s.jsonl", ["The answer is 4."] * 4), "--out", scored)
    result = _invoke("build-pairs", "--scored", scored, "--mode", "scpo", "--vote-threshold", "9", "--out",
                     tmp_path / "pairs.jsonl")
    _one_line_error(result, "vote_threshold 9 is more than the 4 samples per prompt")
    assert not (tmp_path / "pairs.jsonl").exists()


def test_outputs_follow_the_umask(tmp_path):
    from selfalign.io import write_json, write_jsonl

    old = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o644


def test_judge_partial_from_other_settings_is_refused(tmp_path):
    """Same samples, another scorer: its partial scores must not be reused either."""
    from selfalign.io import read_jsonl
    from selfalign.judging.scorers import JudgeConfig
    from selfalign.io import fingerprint

    samples = _samples(tmp_path / "s.jsonl", ["The answer is 4.", "The answer is 5."])
    out = tmp_path / "scored.jsonl"
    other = JudgeConfig(scorer="reward-model").resume_settings()
    out.with_name(out.name + ".partial").write_text(
        json.dumps({"fingerprint": fingerprint(other, read_jsonl(samples, Sample))}) + "\n")
    _one_line_error(_invoke("judge", "--samples", samples, "--out", out), "holds scores of other samples or judge "
                    "settings")
    # a partial file that records its settings (as this version writes it): the refusal says which one changed
    out.with_name(out.name + ".partial").write_text(
        json.dumps({"fingerprint": fingerprint(other, read_jsonl(samples, Sample)), "settings": other}) + "\n")
    _one_line_error(_invoke("judge", "--samples", samples, "--out", out),
                    "holds scores of other judge settings (scorer: 'reward-model' there, 'self-consistency' now)")


class _RatingEndpoint(_LocalEndpoint):
    """Rates every answer with the same pointwise verdict."""

    def __init__(self, rating: int):
        body = json.dumps({"id": "r", "object": "chat.completion", "created": 0, "model": "m",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": f"Rating: [[{rating}]]"}}]}).encode()
        super().__init__(lambda: (200, body, 0))


def test_judge_cache_is_keyed_by_endpoint(tmp_path):
    """A rerun into the same --out against another endpoint asks that endpoint; it never reuses the first one's
    verdicts from the request cache (a fixed endpoint after a broken one)."""
    broken, fixed = _RatingEndpoint(2), _RatingEndpoint(9)
    samples = _samples(tmp_path / "s.jsonl", ["4", "5"])
    try:
        for endpoint in (broken, fixed, fixed):
            result = _invoke("judge", "--samples", samples, "--scorer", "llm-judge", "--mode", "pointwise",
                             "--judge-model", "m", "--judge-base-url", endpoint.url, "--out", tmp_path / "o.jsonl")
            assert result.exit_code == 0, result.output
            scores = [json.loads(line)["score"] for line in (tmp_path / "o.jsonl").read_text().splitlines()]
            assert scores == [2.0, 2.0] if endpoint is broken else scores == [9.0, 9.0]
        assert broken.requests == 2 and fixed.requests == 2, "the third run is answered from the fixed one's cache"
    finally:
        broken.close()
        fixed.close()


@pytest.mark.parametrize("command, option", [("generate", "--prompts"), ("judge", "--samples"),
                                             ("build-pairs", "--scored")])
def test_out_equal_to_the_input_is_refused_and_the_input_kept(tmp_path, command, option):
    path = tmp_path / "data.jsonl"
    if command == "generate":
        path.write_text(json.dumps({"id": "a", "prompt": "What is 2 + 2?"}) + "\n")
    elif command == "judge":
        _samples(path, ["The answer is 4.", "The answer is 5."])
    else:
        from selfalign.judging.self_consistency import score_self_consistency
        from selfalign.records import Sample

        rows = [Sample(prompt_id="q", sample_index=i, messages=[{"role": "user", "content": "2 + 2?"}], text=t,
                       num_tokens=3, finish_reason="stop") for i, t in enumerate(["The answer is 4."] * 2 + ["5"])]
        write_jsonl(path, score_self_consistency(rows))
    before = path.read_bytes()
    extra = ["--engine", "hf"] if command == "generate" else []
    same = tmp_path / "." / "data.jsonl"  # the same file under another spelling
    result = _invoke(command, option, path, "--out", same, *extra)
    _one_line_error(result, "is also the input", "replace it")
    assert path.read_bytes() == before


def test_a_corrupt_manifest_names_the_file_and_the_way_out(tmp_path):
    from test_loop import _recipe

    recipe, run_dir = _recipe(tmp_path), tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text('{"recipe_sha256": "ab')  # torn by a full disk, say
    result = _invoke("run", recipe, "--out", run_dir)
    _one_line_error(result, "manifest.json: not a readable manifest", "--out")
    assert (run_dir / "manifest.json").read_text() == '{"recipe_sha256": "ab'
    assert not (run_dir / ".lock").exists()


def test_a_fifo_as_prompts_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = _invoke("generate", "--prompts", fifo, "--out", tmp_path / "o.jsonl", "--engine", "hf")
    _one_line_error(result, "is not a regular file")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("name", ["../../escaped", "..", "a/b"])
def test_a_recipe_name_cannot_put_the_run_outside_runs(tmp_path, monkeypatch, name):
    from test_loop import _recipe

    recipe = _recipe(tmp_path, name=name)
    monkeypatch.chdir(tmp_path)
    result = _invoke("run", recipe)
    _one_line_error(result, "field 'name'")
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escaped").exists()


def test_a_negative_iteration_count_is_refused(tmp_path):
    from test_loop import _recipe

    result = _invoke("run", _recipe(tmp_path), "--out", tmp_path / "run", "--iterations", "-1")
    message = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "greater than or equal to 1" in message and not (tmp_path / "run").exists()


def test_a_401_that_echoes_the_key_never_prints_it(tmp_path, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {secret}. Header was Bearer {secret}"}})
    endpoint = _LocalEndpoint(lambda: (401, echo.encode(), 0))
    try:
        result = _invoke("judge", "--samples", _samples(tmp_path / "s.jsonl", ["4"]), "--scorer", "llm-judge",
                         "--mode", "pointwise", "--judge-model", "m", "--judge-base-url", endpoint.url,
                         "--out", tmp_path / "o.jsonl")
        _one_line_error(result, "refused the request: HTTP 401")
        assert secret not in result.output and "0123456789" not in result.output
        assert "***" in result.output
    finally:
        endpoint.close()


@pytest.mark.parametrize("body, fragment", [
    ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "has no 'message'"),
    ({"choices": "oops"}, "no list of 'choices'"),
])
def test_answers_of_the_wrong_shape_are_errors_not_tracebacks(tmp_path, body, fragment):
    endpoint = _LocalEndpoint(lambda: (200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                         "model": "m", **body}).encode(), 0))
    try:
        result = _invoke("judge", "--samples", _samples(tmp_path / "s.jsonl", ["4"]), "--scorer", "llm-judge",
                         "--mode", "pointwise", "--judge-model", "m", "--judge-base-url", endpoint.url,
                         "--judge-timeout", "2", "--out", tmp_path / "o.jsonl")
        _one_line_error(result, "gave no answer within --judge-timeout 2s")
        assert fragment in result.output.replace("\n", " ")
    finally:
        endpoint.close()


def test_impossible_log_probs_fall_back_to_the_verdict_text(tmp_path):
    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "A"},
                           "logprobs": {"content": [{"token": "A", "logprob": 1000.0, "bytes": None,
                                                     "top_logprobs": [{"token": "A", "logprob": 1000.0, "bytes": None},
                                                                      {"token": "B", "logprob": 3.0, "bytes": None}]}]}}]}
    endpoint = _LocalEndpoint(lambda: (200, json.dumps(answer).encode(), 0))
    try:
        result = _invoke("judge", "--samples", _samples(tmp_path / "s.jsonl", ["4", "5"]), "--scorer", "llm-judge",
                         "--mode", "pairwise", "--judge-model", "m", "--judge-base-url", endpoint.url,
                         "--out", tmp_path / "o.jsonl")
        assert result.exit_code == 0, result.output
    finally:
        endpoint.close()


def test_serve_on_a_busy_port_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = _invoke("serve", "--engine", "hf", "--port", str(port))
        _one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "--port")
        assert time.monotonic() - started < 20, "refused before the model loads"


def test_serve_holds_fifty_simultaneous_connections(server):
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(50)

    def ask(i):
        barrier.wait()  # all 50 connect at once, as a judge with --concurrency 50 does
        if i % 2:
            with urllib.request.urlopen(server + "/models", timeout=60) as r:
                return r.status
        body = json.dumps({"model": "default", "max_tokens": 1,
                           "messages": [{"role": "user", "content": f"Say {i}"}]}).encode()
        request = urllib.request.Request(server + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(ask, range(50)))
    assert statuses == [200] * 50
