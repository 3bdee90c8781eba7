import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from selfalign.cli import app

runner = CliRunner()


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_generate_cli_writes_samples(tmp_path):
    prompts = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "Say hi."}),
                                            json.dumps({"id": "m", "messages": [{"role": "user", "content": "2+2?"}]})])
    out = tmp_path / "out" / "samples.jsonl"
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--out", str(out), "--engine", "hf",
                                 "--n", "2", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [("0", 0), ("0", 1), ("m", 0), ("m", 1)]


@pytest.mark.parametrize("lines, expected", [
    (['{"prompt": "ok"}', '{"prompt": "ok"', '{"prompt": "x"}'], "line 2: not valid JSON"),
    (['{"prompt": "ok"}', '{"text": "no prompt"}'], "line 2: .*needs a 'prompt' string or a 'messages' list"),
    (['{"messages": [{"role": "robot", "content": "x"}]}'], "line 1, field 'messages.0.role'"),
    (['{"prompt": 5}'], "line 1, field 'prompt'"),
])
def test_malformed_prompt_files_name_file_line_and_field(tmp_path, lines, expected):
    prompts = _write(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "samples.jsonl"
    out.write_text("keep me\n")
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--out", str(out), "--engine", "hf"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "bad.jsonl" in message
    import re

    assert re.search(expected, message), message
    assert out.read_text() == "keep me\n", "a failed run must not touch what was already written"


def test_unknown_engine_and_missing_model(tmp_path):
    prompts = _write(tmp_path / "p.jsonl", ['{"prompt": "hi"}'])
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                                 "--engine", "turbo"])
    assert result.exit_code == 2 and "--engine 'turbo'" in result.output and "'hf', 'vllm' or 'auto'" in result.output
    result = runner.invoke(app, ["generate", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                                 "--engine", "hf", "--model", str(tmp_path / "missing-model" / "x")])
    assert result.exit_code == 2 and "model folder not found" in result.output


def test_kill_during_generation_leaves_no_half_file(tmp_path, cli_env):
    prompts = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": f"Tell a long story number {i}."})
                                            for i in range(6)])
    out = tmp_path / "samples.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "selfalign.cli", "generate", "--prompts", str(prompts),
                             "--out", str(out), "--engine", "hf", "--n", "2", "--max-new-tokens", "400"],
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(20)  # model loaded (~5 s) and generation under way: 12 sequences x 400 tokens take longer
    assert proc.poll() is None, proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert not list(tmp_path.glob(".samples.jsonl.*")), "no temporary file is left behind"


def test_info_lists_engines():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0 and "engine hf" in result.output
