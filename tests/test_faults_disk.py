"""Failures a user can fix, each answered in one line with nothing lost: a read-only or full disk (real tmpfs mounts),
a reply trickled past the judge's budget (a real local HTTP server), a CUDA device asked for on a CPU machine, an
evaluation output that is a file, `eval compare` on folders without results, two first commands on an empty model
cache (two real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_faults import _LocalEndpoint, _invoke, _one_line_error, _samples  # noqa: E402


@pytest.fixture()
def tmpfs(tmp_path):
    """mount(KIND) -> a fresh tmpfs folder: 'ro' (read-only) or 'full' (16 KiB). Needs mount rights (root, as in CI
    containers); skipped with the reason where the test cannot make one."""
    mounted = []

    def mount(kind: str) -> Path:
        target = tmp_path / f"mnt-{kind}"
        target.mkdir()
        options = "ro,size=64k" if kind == "ro" else "size=16k"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _scored(tmp_path) -> Path:
    scored = tmp_path / "scored.jsonl"
    samples = _samples(tmp_path / "s.jsonl", ["The answer is 4."] * 3 + ["The answer is 5. " + "x" * 20000])
    assert _invoke("judge", "--samples", samples, "--out", scored).exit_code == 0
    return scored


def test_a_read_only_disk_is_one_line_naming_the_path(tmp_path, tmpfs):
    scored, readonly = _scored(tmp_path), tmpfs("ro")
    result = _invoke("build-pairs", "--scored", scored, "--out", readonly / "pairs.jsonl")
    _one_line_error(result, str(readonly / "pairs.jsonl"), "read-only")
    assert list(readonly.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_no_half_file_and_the_old_output(tmp_path, tmpfs):
    scored, full = _scored(tmp_path), tmpfs("full")
    old = full / "pairs.jsonl"
    old.write_text('{"kept": true}\n')
    result = _invoke("build-pairs", "--scored", scored, "--out", old)  # the pair's rejected text alone is 20 KB
    _one_line_error(result, str(old), "no space left")
    assert old.read_text() == '{"kept": true}\n'
    assert [p.name for p in full.iterdir()] == ["pairs.jsonl"], "no temporary file is left behind"


def test_a_trickled_reply_ends_within_the_whole_request_budget(tmp_path):
    body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "Rating: [[7]]"}}]}).encode()
    endpoint = _LocalEndpoint(lambda: (200, body, 0), trickle=0.2)  # 40 s for 200 bytes; every read is fast
    try:
        started = time.monotonic()
        result = _invoke("judge", "--samples", _samples(tmp_path / "s.jsonl", ["4"]), "--scorer", "llm-judge",
                         "--mode", "pointwise", "--judge-model", "m", "--judge-base-url", endpoint.url,
                         "--judge-timeout", "3", "--out", tmp_path / "o.jsonl")
        elapsed = time.monotonic() - started
        _one_line_error(result, "gave no answer within --judge-timeout 3s", "APITimeoutError")
        assert elapsed < 12, f"the budget was 3 s, the command took {elapsed:.1f}s"
    finally:
        endpoint.close()


def test_cuda_asked_for_on_a_cpu_machine_is_one_line(tmp_path, tiny_model_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the request is valid here")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    result = _invoke("generate", "--prompts", prompts, "--out", tmp_path / "o.jsonl", "--engine", "hf", "--model",
                     tiny_model_path, "--engine-kwargs", '{"device": "cuda"}')
    _one_line_error(result, "device 'cuda'", "no CUDA device")
    assert not (tmp_path / "o.jsonl").exists()


def test_eval_out_that_is_a_file_is_one_line(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    result = _invoke("eval", "gsm8k", "--out", taken, "--data", tmp_path / "none.jsonl", "--limit", "1")
    _one_line_error(result, str(taken), "is a file")
    assert taken.read_text() == "mine\n"


def test_eval_compare_on_folders_without_results_is_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    result = _invoke("eval", "compare", tmp_path / "a", tmp_path / "b")
    _one_line_error(result, str(tmp_path / "a"), "holds no results.json")
    (tmp_path / "a" / "eval.json").write_text("[1, 2]")
    _one_line_error(_invoke("eval", "compare", tmp_path / "a" / "eval.json", tmp_path / "b"), "expected a JSON object")


def test_two_first_commands_on_an_empty_model_cache_both_succeed(tmp_path, cli_env):
    """Both convert the default GGUF at once into an empty cache: one converts, the other waits and reuses it."""
    env = {**cli_env, "SELFALIGN_CACHE": str(tmp_path / "cache")}
    code = "from selfalign.models import resolve_model; print(resolve_model('default'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(paths) == 1 and (Path(paths.pop()) / "model.safetensors").exists()
    leftovers = [p.name for p in (tmp_path / "cache" / "models").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_training_never_writes_into_a_folder_of_the_users_files(tmp_path, tiny_model_path, monkeypatch):
    """The final weights and their README.md land at OUT's root: a project folder (or `.`) is refused, even with
    --force, and its README.md is untouched; an empty folder and our own earlier output are used."""
    from selfalign.io import write_jsonl
    from test_train import _pairs

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, _pairs(4))
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# my project\n")
    monkeypatch.chdir(project)
    train = ["train", "--pairs", pairs, "--model", tiny_model_path, "--max-steps", "1", "--lora-r", "4",
             "--report-to", "none"]
    for out in (project, "."):
        for force in ([], ["--force"]):
            _one_line_error(_invoke(*train, "--out", out, *force), "holds files selfalign did not write (README.md)")
    assert (project / "README.md").read_text() == "# my project\n" and sorted(p.name for p in project.iterdir()) \
        == ["README.md"]
    fresh = tmp_path / "fresh"
    assert _invoke(*train, "--out", fresh).exit_code == 0
    assert _invoke(*train, "--out", fresh).exit_code == 0, "its own output is resumed, not refused"
