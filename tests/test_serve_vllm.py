"""`selfalign serve` through vLLM's own OpenAI server: the judge path against the real server on localhost."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from selfalign.cli import app
from selfalign.generation import vllm_available
from selfalign.generation.options import EngineOptions


def test_engine_layout_becomes_vllm_server_flags():
    from selfalign.serve_vllm import vllm_serve_command

    options = EngineOptions(data_parallel_size=2, max_model_len=512, enable_prefix_caching=False,
                            engine_kwargs={"max_num_seqs": 8, "enforce_eager": True,
                                           "compilation_config": {"level": 0}})
    argv, env = vllm_serve_command("default", "127.0.0.1", 8123, options, seed=3)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    text = " ".join(argv)
    for expected in ("--served-model-name default", "--port 8123", "--seed 3", "--max-model-len 512",
                     "--data-parallel-size 2", "--no-enable-prefix-caching", "--max-num-seqs 8", "--enforce-eager",
                     '--compilation-config {"level": 0}', "--logprobs-mode raw_logprobs"):
        assert expected in text, expected


def test_builtin_server_refuses_engine_layout():
    result = CliRunner().invoke(app, ["serve", "--engine", "hf", "--data-parallel-size", "2"])
    assert result.exit_code == 2 and "need --engine vllm" in result.output, result.output


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_judge_through_the_real_vllm_server(monkeypatch):
    from selfalign.judging.backends import LocalJudge, OpenAIJudge

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "selfalign.cli", "serve", "--engine", "vllm", "--port", str(port),
                               "--max-model-len", "1024"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, "the vLLM server exited"
            try:
                with urllib.request.urlopen(base + "/models", timeout=5) as response:
                    assert b'"id":"default"' in response.read()
                break
            except OSError:
                assert time.time() < deadline, "the vLLM server did not come up"
                time.sleep(2)
        monkeypatch.setenv("SELFALIGN_TEST_KEY", "sk-unused")
        remote = OpenAIJudge("default", base_url=base, api_key_env="SELFALIGN_TEST_KEY", max_tokens=24)
        local = LocalJudge("default", max_new_tokens=24)
        chats = [[{"role": "user", "content": f"Pick A or B. Question {i}: which is a fruit? A: apple B: stone"}]
                 for i in range(3)]
        for r, l in zip(remote.letter_probs(chats), local.letter_probs(chats)):
            assert r["A"] == pytest.approx(l["A"], abs=1e-3), "the same model through vLLM's server and in process"
        assert remote.complete(chats[:1]) == local.complete(chats[:1])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
