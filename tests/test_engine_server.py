"""The run's engine server (selfalign.run.engine_server): several generation jobs on one engine, each output atomic
with its marker, finished jobs skipped, changed ones redone; one engine for a whole run that switches policies and
refuses a request for another layout; the client the loop uses, and the job cache."""

import io
import json
import shutil

import pytest
import torch

from selfalign.arithmetic import make_splits
from selfalign.evaluation.heldout import HeldoutConfig
from selfalign.generation import GenerationConfig
from selfalign.io import write_jsonl
from selfalign.errors import StageError
from selfalign.run.display import RunDisplay
from selfalign.run.engine_server import (EngineClient, EngineRequest, GenerateJob, HeldoutJob, finished,
                                         job_fingerprint, run_jobs, serve)
from selfalign.run.results import Manifest


@pytest.fixture()
def job_files(tmp_path):
    train, heldout = make_splits(3, 3, seed=2)
    write_jsonl(tmp_path / "prompts.jsonl", train)
    write_jsonl(tmp_path / "heldout.jsonl", heldout)
    return tmp_path


def _spec(folder, model, out="a", n=2):
    return EngineRequest(model=model, engine="hf", seed=0, jobs=[
        HeldoutJob(config=HeldoutConfig(data=str(folder / "heldout.jsonl"), k=2, max_new_tokens=8),
                   out=str(folder / out / "eval.json")),
        GenerateJob(config=GenerationConfig(engine="hf", n=n, max_new_tokens=8, seed=1),
                    prompts=str(folder / "prompts.jsonl"), out=str(folder / out / "samples.jsonl"))])


def test_jobs_write_outputs_and_markers_and_skip_when_done(job_files, tiny_model_path):
    spec = _spec(job_files, tiny_model_path)
    markers = run_jobs(spec)
    assert [m["prompts"] for m in markers] == [3, 3] and markers[1]["samples"] == 6
    samples, evaluation = job_files / "a" / "samples.jsonl", job_files / "a" / "eval.json"
    assert json.loads(evaluation.read_text())["num_prompts"] == 3 and len(samples.read_text().splitlines()) == 6
    stamps = (samples.stat().st_mtime_ns, evaluation.stat().st_mtime_ns)
    assert run_jobs(spec) == markers  # nothing to do: no engine, nothing rewritten
    assert (samples.stat().st_mtime_ns, evaluation.stat().st_mtime_ns) == stamps
    changed = _spec(job_files, tiny_model_path, n=3)  # other settings: the generate job is not done any more
    assert finished(changed.jobs[0], tiny_model_path) and not finished(changed.jobs[1], tiny_model_path)
    run_jobs(changed)
    assert evaluation.stat().st_mtime_ns == stamps[1] and len(samples.read_text().splitlines()) == 9
    # An output without its marker (a kill between the two writes) is redone.
    (job_files / "a" / "eval.json.job.json").unlink()
    assert finished(changed.jobs[0], tiny_model_path) is None


def test_a_request_file_holds_the_layout_once_and_one_request_has_one_layout(job_files, tiny_model_path):
    from pydantic import ValidationError

    from selfalign.generation.options import EngineOptions

    plain = _spec(job_files, tiny_model_path)
    with pytest.raises(ValidationError, match="sets dtype other than the request's"):
        EngineRequest.model_validate({**plain.model_dump(), "options": {"dtype": "bfloat16"}})
    job = plain.jobs[1].model_copy(update={"config": plain.jobs[1].config.model_copy(update={"dtype": "bfloat16"})})
    request = EngineRequest(model=tiny_model_path, engine="hf", options=EngineOptions(dtype="bfloat16"),
                            jobs=[plain.jobs[0], job])
    data = request.file_data()
    [generate] = [job for job in data["jobs"] if job["kind"] == "generate"]
    assert "dtype" not in generate["config"] and "engine" not in generate["config"] and generate["config"]["n"] == 2
    assert data["options"]["dtype"] == "bfloat16" and json.dumps(data).count('"dtype"') == 1
    again = EngineRequest.model_validate(data)
    assert again == request and again.jobs[1].config.dtype == "bfloat16"  # the job's config is whole again
    # so a job read back from the file has the fingerprint its writer computed
    assert job_fingerprint(again.jobs[1], tiny_model_path) == job_fingerprint(job, tiny_model_path)


def test_engine_server_keeps_one_engine_and_switches_policies(job_files, tiny_model_path, tmp_path, monkeypatch):
    from selfalign import generation

    other = tmp_path / "other-policy"  # the same architecture, other weights: as the loop's next export
    shutil.copytree(tiny_model_path, other)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    model.save_pretrained(other)

    starts = []
    real_get_engine = generation.get_engine
    monkeypatch.setattr(generation, "get_engine", lambda *a, **k: starts.append(a) or real_get_engine(*a, **k))
    requests = []
    for name, model_path in (("first", tiny_model_path), ("second", str(other)), ("bad", tiny_model_path),
                             ("other-layout", tiny_model_path)):
        spec = _spec(job_files, model_path, out=name)
        if name == "other-layout":  # the running engine was built for another context length
            spec = spec.model_copy(update={"options": spec.options.model_copy(update={"max_model_len": 512})})
        path = job_files / f"{name}.json"
        bad = {"model": "x", "jobs": [{"kind": "nope"}]}
        path.write_text(json.dumps(spec.file_data() if name != "bad" else bad))  # as the client writes them
        requests.append(json.dumps({"jobs": str(path), "progress": str(job_files / f"{name}.progress.json")}))
    serve(io.StringIO("\n".join(requests) + "\n"), console=None)

    assert len(starts) == 1, "one engine for every policy"
    results = {name: json.loads((job_files / f"{name}.json.result.json").read_text())
               for name in ("first", "second", "bad", "other-layout")}
    assert results["first"] == results["second"] == {"ok": True}
    assert not results["bad"]["ok"] and "nope" in results["bad"]["error"]
    refused = results["other-layout"]
    assert not refused["ok"]
    assert "layout is not the running engine's (max_model_len: 2048 there, 512 now" in refused["error"]
    assert not (job_files / "other-layout").exists(), "a refused request writes nothing"
    texts = lambda name: [json.loads(line)["text"] for line in  # noqa: E731
                           (job_files / name / "samples.jsonl").read_text().splitlines()]
    assert texts("first") != texts("second"), "the second job ran on the second policy's weights"
    fresh = _spec(job_files, str(other), out="fresh")
    run_jobs(fresh)
    assert texts("fresh") == texts("second"), "a switched engine samples as a fresh one on that policy"
    assert json.loads((job_files / "first.progress.json").read_text())["n"] > 0


@pytest.mark.parametrize("keep", [False, True])
def test_the_loops_engine_client_runs_jobs_in_a_server_kept_or_released_between_steps(job_files, tiny_model_path,
                                                                                      keep):
    manifest = Manifest(job_files / "manifest.json")
    engines = EngineClient(job_files, manifest, keep=keep)
    try:
        for name in ("one", "two"):
            spec = _spec(job_files, tiny_model_path, out=name)
            markers = engines.run(spec, job_files / name, "evaluate")
            assert [m["prompts"] for m in markers] == [3, 3]
            engines.release()  # a step that does not sample comes next: the engine ends unless the run keeps it
            assert (engines.server is not None) == keep
        assert engines.run(spec, job_files / "two", "evaluate") == markers  # done: skipped
        assert manifest.data["engine_starts"] == (1 if keep else 2)
        bad = _spec(job_files, tiny_model_path, out="bad")
        bad.jobs[0].config.data = str(job_files / "missing.jsonl")
        with pytest.raises(StageError, match="missing.jsonl"):
            engines.run(bad, job_files / "bad", "evaluate")
        if keep:  # the server reported the failure and serves on
            assert engines.server.poll() is None
    finally:
        engines.close()
    assert engines.server is None


def test_the_cache_key_holds_the_vllm_engines_cpu_block_size(job_files, tiny_model_path, monkeypatch):
    """The KV block size changes which random draws vLLM's samples get: jobs sampled under another default are a
    miss, not reused. The hf engine has no blocks: its key does not move."""
    from selfalign.generation import vllm_available
    from selfalign.generation import vllm_engine
    from selfalign.run.job_cache import job_key

    monkeypatch.delenv("SELFALIGN_JOB_CACHE", raising=False)
    hf = _spec(job_files, tiny_model_path)
    keys = lambda spec: [job_key(spec, job) for job in spec.jobs]  # noqa: E731
    before = keys(hf)
    monkeypatch.setattr(vllm_engine, "CPU_BLOCK_SIZE", 64)
    assert keys(hf) == before and None not in before
    if not vllm_available():
        return
    on_vllm = hf.model_copy(update={"engine": "vllm"})
    at_64 = keys(on_vllm)
    monkeypatch.setattr(vllm_engine, "CPU_BLOCK_SIZE", 32)
    assert all(a != b for a, b in zip(at_64, keys(on_vllm)))


def test_the_engine_server_stores_base_model_jobs_in_the_cache_and_a_second_run_starts_no_engine(
        job_files, tiny_model_path, monkeypatch):
    """Through the real server process (`python -m selfalign.run.engine_server`, whose job classes are __main__'s):
    both job kinds are stored with every file they write, and the same jobs in another run folder are restored before
    any engine starts."""
    from selfalign.evaluation.files import samples_path

    monkeypatch.setenv("SELFALIGN_JOB_CACHE", str(job_files / "cache"))
    manifest = Manifest(job_files / "manifest.json")
    engines = EngineClient(job_files, manifest, keep=False, cache_model=tiny_model_path)
    printed = io.StringIO()
    display = RunDisplay(1, stream=printed)
    try:
        for name in ("one", "two"):
            spec = _spec(job_files, tiny_model_path, out=name)
            markers = engines.run(spec, job_files / name, "evaluate", display=display)
            engines.release()
            assert [bool(m.get("cached")) for m in markers] == ([False, False] if name == "one" else [True, True])
    finally:
        engines.close()
    assert manifest.data["engine_starts"] == 1, "the second run's jobs all came from the cache: no engine"
    for out in ("eval.json", "samples.jsonl"):
        assert (job_files / "two" / out).read_bytes() == (job_files / "one" / out).read_bytes()
    eval_samples = samples_path(job_files / "one" / "eval.json")
    assert samples_path(job_files / "two" / "eval.json").read_bytes() == eval_samples.read_bytes()
    assert printed.getvalue().count("taken from the cache") == 2
