"""`selfalign run` end to end on a tiny configuration, a SIGKILL during training and the resume, and bad recipes."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from selfalign.arithmetic import make_rephrased, make_splits
from selfalign.cli import app
from selfalign.run.loop import ITERATION_STAGES

TINY = {
    "name": "tiny", "model": "default", "iterations": 2, "seed": 0, "prompts_per_iteration": 8,
    "generation": {"engine": "hf", "n": 4, "temperature": 1.0, "max_new_tokens": 48},
    "judge": {"scorer": "self-consistency"},
    "pairs": {"mode": "scpo", "vote_threshold": 1, "max_pairs_per_prompt": 2},
    "train": {"loss_type": "scpo", "learning_rate": 1e-4, "max_steps": 4, "per_device_train_batch_size": 1,
              "lora_r": 4, "save_steps": 1, "report_to": []},
    "eval": {"limit": 4, "k": 2, "max_new_tokens": 32},
}


def _recipe(tmp_path, **changes) -> Path:
    train, heldout = make_splits(16, 4, seed=5)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    recipe = {**TINY, "prompts": str(tmp_path / "train.jsonl")}
    recipe["eval"] = {**TINY["eval"], "data": str(tmp_path / "heldout.jsonl")}
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_two_iterations_with_a_kill_during_training(tmp_path):
    (tmp_path / "rephrased.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_rephrased(3)))
    recipe = _recipe(tmp_path, curriculum="agreement", eval_sets={"rephrased": str(tmp_path / "rephrased.jsonl")},
                     verifier_check_every_iteration=True)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "selfalign.cli", "run", str(recipe), "--out", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = run_dir / "iter_01" / "checkpoint"
    deadline = time.time() + 600
    try:
        while not (checkpoints.exists() and any(checkpoints.glob("checkpoint-*"))):
            assert proc.poll() is None, "the run ended before training checkpointed"
            assert time.time() < deadline, "no training checkpoint in 600 s"
            time.sleep(0.2)
    finally:  # on success the kill under test; on a failure it leaves no run behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its training subprocess, mid-training
    proc.wait()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    before = manifest["iterations"]["1"]["stages"]
    assert set(before) == {"generate", "judge", "filter"}, "killed during training"
    samples_mtime = (run_dir / "iter_01" / "samples.jsonl").stat().st_mtime

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for stage in ("generate", "judge", "filter"):
        assert manifest["iterations"]["1"]["stages"][stage] == before[stage], f"{stage} was redone"
    assert (run_dir / "iter_01" / "samples.jsonl").stat().st_mtime == samples_mtime
    assert "resumed from" in (run_dir / "iter_01" / "logs" / "train.log").read_text()
    # A run you can watch: the first line at once, then a start and a summary line per stage; piped, no escapes.
    printed = result.stdout.splitlines()
    assert printed[0].startswith("selfalign run tiny: 2 iteration(s) in")
    for line in ("base · evaluate · done earlier, skipped", "iter 1/2 · generate · done earlier, skipped",
                 "iter 1/2 · train · started", "iter 2/2 · generate · started"):
        assert line in printed, line
    assert any(line.startswith("iter 1/2 · train · done in") and "(4 steps)" in line for line in printed)
    assert any(line.startswith("iter 2/2 · generate · done in") and "samples)" in line for line in printed)
    assert any(line.startswith("iter 2/2 · evaluate · done in") and "greedy accuracy" in line for line in printed)
    assert "\x1b[" not in result.stdout and "\r" not in result.stdout
    # Each iteration's health, from the real evaluations: flips against the previous iterate (4 held-out items)
    assert any(line.startswith("health: iteration 2 vs 1:") or
               line.startswith("WARNING: worse than the previous iterate: iteration 2 vs 1:") for line in printed)
    health = manifest["iterations"]["2"]["health"]
    flips = health["vs_previous"]
    assert sum(flips[k] for k in ("right_to_wrong", "wrong_to_right", "both_right", "both_wrong")) == 4
    assert "vs_base" in health and 0 <= health["samples"]["finished_share"] <= 1
    assert "## Iteration health" in (run_dir / "report.md").read_text()
    # The extra held-out set: evaluated greedily beside eval.data for every policy, compared in the health and report
    for iteration in ("00", "01", "02"):
        extra = json.loads((run_dir / f"iter_{iteration}" / "eval_rephrased.json").read_text())
        assert extra["num_prompts"] == 3 and len(extra["greedy_correct"]) == 3 and "sampled_accuracy" not in extra
    rephrased = health["sets"]["rephrased"]
    assert sum(rephrased["vs_previous"][k] for k in ("right_to_wrong", "wrong_to_right", "both_right",
                                                      "both_wrong")) == 3 and "vs_base" in rephrased
    assert "rephrased_greedy_accuracy" in manifest["iterations"]["2"]["stages"]["evaluate"]
    assert "| rephrased (n = 3) |" in (run_dir / "report.md").read_text()
    assert any(line.startswith("greedy gain vs base on rephrased: ") for line in printed)
    # The curriculum: iteration 2 retried iteration 1's prompts that had no checked answer (at most a quarter)
    from selfalign.run.curriculum import prompt_status

    waiting = [pid for pid, status in prompt_status(run_dir / "iter_01" / "scored.jsonl").items()
               if status == "waiting"]
    second = [json.loads(line)["id"] for line in (run_dir / "iter_02" / "prompts.jsonl").read_text().splitlines()]
    assert second[:min(2, len(waiting))] == waiting[:2] and len(second) == 8 == len(set(second))
    for iteration in ("1", "2"):
        assert set(manifest["iterations"][iteration]["stages"]) == {"generate", "judge", "filter", "train", "export",
                                                                   "evaluate", "recheck_sample", "recheck"}
        # the verifier measured again on the policy this iteration trained, against its own greedy answers
        request = yaml.safe_load((run_dir / f"iter_0{iteration}" / "config" / "verifier-sample.yaml").read_text())
        assert request["model"] == str(run_dir / f"iter_0{iteration}" / "merged")
        recheck = json.loads((run_dir / f"iter_0{iteration}" / "verifier.json").read_text())
        assert recheck["prompts"] == 4 and recheck["verdict"] in ("stronger", "not stronger", "unclear", "no signal")
    assert "## Verifier check per policy" in (run_dir / "report.md").read_text()
    assert "evaluate" in manifest["iterations"]["0"]["stages"] and manifest.get("finished")
    for name in ("samples.jsonl", "scored.jsonl", "pairs.jsonl", "eval.json", "merged/config.json",
                 "merged/model.safetensors", "checkpoint/adapter_model.safetensors"):
        assert (run_dir / "iter_02" / name).exists(), name
    assert manifest["versions"]["torch"] and manifest["recipe_sha256"]
    assert (run_dir / "report.md").exists() and (run_dir / "metrics.png").stat().st_size > 1000
    merged_card = (run_dir / "iter_02" / "merged" / "README.md").read_text()
    assert "tiny" in merged_card and "scpo" in merged_card
    # Policy 2 (iteration 1's merged export) was evaluated, then sampled iteration 2's data, on the run's kept
    # engine, which switched policies in place; and the sampler's log-probs were the reference.
    for name, out in (("iter_01/config/evaluate.yaml", "iter_01/eval.json"),
                      ("iter_02/config/generate.yaml", "iter_02/samples.jsonl")):
        request = yaml.safe_load((run_dir / name).read_text())
        assert request["model"] == str(run_dir / "iter_01" / "merged")
        extra = [str(run_dir / "iter_01" / "eval_rephrased.json")] if out.endswith("eval.json") else []
        assert [job["out"] for job in request["jobs"]] == [str(run_dir / out), *extra]
    assert manifest["engine_starts"] == 2, "one kept engine per `selfalign run` process (the kill ended the first)"
    assert "run by the run's engine server" in (run_dir / "iter_02" / "logs" / "generate.log").read_text()
    for iteration in ("1", "2"):
        reference = manifest["iterations"][iteration]["stages"]["train"]["reference"]
        assert reference["from_sampler"] > 0 and reference["from_sampler"] + reference["computed"] > 0

    # A changed recipe is refused without --force; nothing is redone with it.
    recipe.write_text(recipe.read_text().replace("seed: 0", "seed: 1"))
    refused = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run_dir)])
    assert refused.exit_code == 2 and "changed since" in refused.output
    assert "seed: 0 there, 1 now" in " ".join(refused.output.split())  # what changed, not only that it did


@pytest.mark.slow
def test_kto_loop_trains_on_every_sample_of_its_kept_prompts(tmp_path):
    """One iteration of the KTO recipe's shape: singles from votes, KTO training, export, evaluation."""
    recipe = _recipe(tmp_path, iterations=1, pairs={"mode": "singles", "vote_threshold": 2},
                     train={**TINY["train"], "loss_type": "kto", "per_device_train_batch_size": 4, "max_steps": 2})
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "selfalign.cli", "run", str(recipe), "--out", str(run_dir)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    singles = [json.loads(line) for line in (run_dir / "iter_01" / "pairs.jsonl").read_text().splitlines()]
    report = json.loads((run_dir / "iter_01" / "pairs.report.json").read_text())
    assert len(singles) == report["desirable"] + report["undesirable"] == 4 * report["prompts_kept"]
    assert {row["label"] for row in singles} <= {True, False} and all("completion" in row for row in singles)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    train = manifest["iterations"]["1"]["stages"]["train"]
    # 2 steps of 4 records reach 8 of them: only those need a reference pass
    assert train["steps"] == 2 and train["reference"] == {"from_sampler": 0, "computed": 8,
                                                         "not_reached": len(singles) - 8}
    assert "greedy" in json.dumps(manifest["iterations"]["1"]["stages"]["evaluate"])
    assert (run_dir / "iter_01" / "merged" / "model.safetensors").exists()


@pytest.mark.slow
def test_mbr_self_training_loop(tmp_path):
    """One iteration with MBR consensus scores (chrF) as the judge: best vs worst sample per prompt, DPO."""
    recipe = _recipe(tmp_path, iterations=1, judge={"scorer": "mbr", "utility": "chrf", "mbr_references": 3},
                     pairs={"mode": "pairs", "max_pairs_per_prompt": 1},
                     train={**TINY["train"], "loss_type": "dpo", "max_steps": 2})
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "selfalign.cli", "run", str(recipe), "--out", str(run_dir)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    scored = [json.loads(line) for line in (run_dir / "iter_01" / "scored.jsonl").read_text().splitlines()]
    assert all(s["scorer"] == "mbr:chrf" and 0 <= s["score"] <= 1 for s in scored)
    pairs = [json.loads(line) for line in (run_dir / "iter_01" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["iterations"]["1"]["stages"]["train"]["steps"] == 2


@pytest.mark.slow
def test_self_taught_judge_alternates_with_policy_training(tmp_path):
    """One iteration: the judge is trained on the iteration's prompts, then judges the policy's samples."""
    recipe = _recipe(tmp_path, iterations=1, prompts_per_iteration=8,
                     judge={"scorer": "llm-judge", "mode": "pairwise", "judge_model": "policy"},
                     judge_training={"heldout": 3, "verdicts": 6, "reasoning": False, "verdict_max_new_tokens": 6,
                                     "answer_max_new_tokens": 32,
                                     "train": {"max_steps": 2, "per_device_train_batch_size": 2, "report_to": []}},
                     pairs={"mode": "pairs", "max_pairs_per_prompt": 1},
                     train={**TINY["train"], "loss_type": "dpo", "max_steps": 2})
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "selfalign.cli", "run", str(recipe), "--out", str(run_dir)],
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = json.loads((run_dir / "manifest.json").read_text())["iterations"]["1"]["stages"]
    assert list(stages)[:2] == ["generate", "judge_train"]
    trained = stages["judge_train"]
    assert trained["heldout_pairs"] == 3 and 0 <= trained["accuracy"] <= 1 and trained["records"] >= 1
    judge_config = yaml.safe_load((run_dir / "iter_01" / "config" / "judge.yaml").read_text())
    assert judge_config["judge_model"] == trained["judge"] == str(run_dir / "iter_01" / "judge_training" / "iter_01"
                                                                 / "merged")
    scored = [json.loads(line) for line in (run_dir / "iter_01" / "scored.jsonl").read_text().splitlines()]
    assert all(s["scorer"].startswith("llm-judge-pairwise:") for s in scored)
    assert "iter 1/1 · judge_train · done in" in result.stdout
    report = (run_dir / "report.md").read_text()
    assert "| judge acc before | judge acc | judge pos-consistent |" in report  # per iteration, in the run's report
    assert f"| {trained['accuracy']:.3f} | {trained['position_consistency']:.3f} |" in report


@pytest.mark.parametrize("change, expected", [
    ({"iteratons": 3}, "field 'iteratons': Extra inputs are not permitted"),
    ({"iterations": "two"}, "field 'iterations'"),
    ({"train": {"loss_type": "ppo"}}, "field 'train.loss_type'"),
    ({"train": {"beta": 0.1, "lr": 1}}, "field 'train.lr'"),
    ({"model": "/nonexistent/model/folder"}, "field 'model'.*not found"),
    ({"prompts": "/nonexistent/prompts.jsonl"}, "field 'prompts': file not found"),
    ({"pairs": {"mode": "scpo", "vote_threshold": 5}}, "field 'pairs.vote_threshold': 5 votes can never be reached"),
    ({"train": {"loss_type": "lipo"}}, "field 'train.loss_type': 'lipo' trains on list records, but pairs.mode 'scpo'"),
    ({"train": {"loss_type": "kto"}}, "'kto' trains on single records, but pairs.mode 'scpo' builds pair records: set "
                                      "pairs.mode to singles"),
    ({"train": {"model": "default"}}, "field 'train.model': set the policy with the recipe's top-level 'model'"),
    ({"generation": {"n": 1}}, "field 'generation.n': the loop needs at least 2 samples"),
    ({"judge_training": {"heldout": 4}}, "field 'judge_training': trains a local LLM judge"),
    ({"judge": {"scorer": "llm-judge", "concurrency": 0}}, "field 'judge.concurrency'"),
    ({"generation": {"engine": "hf", "engine_kwargs": {"max_num_seqs": 8}}},
     "field 'generation.engine_kwargs': 'max_num_seqs' is not an argument of the hf engine"),
    ({"generation": {"data_parallel_size": 0}}, "field 'generation.data_parallel_size'"),
    ({"train_launcher": "srun {accelerate} {train}"}, "field 'train_launcher': starts `accelerate launch` on each "
                                                      "node; set accelerate_config too"),
    ({"eval_sets": {"Re phrased": "x.jsonl"}}, "field 'eval_sets': 'Re phrased': a set's name is lower-case"),
    ({"eval_sets": {"rephrased": "/nonexistent/set.jsonl"}}, "field 'eval_sets.rephrased': file not found"),
    ({"curriculum": "hardest"}, "field 'curriculum'"),
    ("set-without-answers", "field 'eval_sets.unlabeled': .*has no prompt with an 'answer'"),
    ("empty-prompts", "field 'prompts': .*holds no prompts"),
    ("duplicate-ids", "field 'prompts': prompt id 'a' appears more than once"),
    ("bad-prompt-line", "field 'prompts': .*line 2: not valid JSON"),
])
def test_bad_recipes_fail_before_any_work(tmp_path, change, expected):
    import re

    if isinstance(change, str):  # a bad prompts file rather than a bad field
        lines = {"empty-prompts": "", "duplicate-ids": '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n',
                 "bad-prompt-line": '{"prompt": "x"}\n{"prompt": \n',
                 "set-without-answers": '{"prompt": "x"}\n'}[change]
        (tmp_path / "bad_prompts.jsonl").write_text(lines)
        change = {"eval_sets": {"unlabeled": str(tmp_path / "bad_prompts.jsonl")}} if change == "set-without-answers" \
            else {"prompts": str(tmp_path / "bad_prompts.jsonl")}
    recipe = _recipe(tmp_path, **change)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run_dir)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "recipe.yaml" in message and re.search(expected, message), message
    assert not run_dir.exists(), "no work may start on a bad recipe"


def test_shipped_recipes_validate():
    from selfalign.recipes import load_recipe

    for path in sorted(Path(__file__).resolve().parents[1].glob("recipes/*.yaml")):
        recipe, digest = load_recipe(path)
        assert recipe.name == path.stem and len(digest) == 64


def test_stage_helper_runs_a_stage_from_the_config_it_writes(tmp_path):
    """The loop's judge step goes through run_stage: its typed config on disk, read back by `selfalign judge
    --config`, including the endpoint fields (concurrency, API-key variable) the recipe's judge step now shares."""
    from selfalign.io import read_jsonl, write_jsonl
    from selfalign.run import stages
    from selfalign.run.executor import Step
    from selfalign.run.results import Manifest
    from selfalign.recipes import load_recipe
    from selfalign.records import Sample, ScoredSample

    recipe, _ = load_recipe(_recipe(tmp_path, judge={"scorer": "self-consistency", "concurrency": 3,
                                                     "judge_api_key_env": "MY_KEY"}))
    step = Step(next(s for s in ITERATION_STAGES if s.name == "judge"), 1, recipe, tmp_path / "run",
                Manifest(tmp_path / "run" / "manifest.json"))
    it_dir = step.it_dir
    texts = ["The answer is 4.", "The answer is 4.", "The answer is 5.", "no idea"]
    write_jsonl(it_dir / "samples.jsonl", [Sample(prompt_id="q", sample_index=i, messages=[{"role": "user",
                                                  "content": "2+2?"}], text=t, num_tokens=4, finish_reason="stop")
                                           for i, t in enumerate(texts)])
    report = stages.judge(step)
    written = yaml.safe_load((it_dir / "config" / "judge.yaml").read_text())
    assert written == {**recipe.judge.model_dump(), "judge_model": "default"}  # 'policy' resolved to iteration 1's
    assert written["concurrency"] == 3 and written["judge_api_key_env"] == "MY_KEY"
    scored = read_jsonl(it_dir / "scored.jsonl", ScoredSample)
    assert [s.votes for s in scored] == [2, 2, 1, 0] and report.samples == 4
    assert "--config" in (it_dir / "logs" / "judge.log").read_text()


@pytest.mark.slow
def test_check_verifier_measures_the_judge_before_any_training(tmp_path):
    """`selfalign check-verifier`: iteration 0 only (base evaluation and the verifier check), its verdict printed,
    nothing trained; `selfalign run` on the same folder then reuses that work."""
    recipe = _recipe(tmp_path, judge={"scorer": "execution"}, verifier_check=4, iterations=1)
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "selfalign.cli", "check-verifier", str(recipe), "--out",
                             str(run_dir)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    verdict = json.loads((run_dir / "iter_00" / "verifier.json").read_text())
    assert verdict["prompts"] == 4 and verdict["verdict"] in ("stronger", "not stronger", "unclear", "no signal")
    assert verdict["explanation"] in result.stdout.replace("\n", " ") or verdict["verdict"] in result.stdout
    scored = [json.loads(line) for line in (run_dir / "iter_00" / "verifier_scored.jsonl").read_text().splitlines()]
    assert len(scored) == 4 * TINY["generation"]["n"] and all(s["verdict"] for s in scored)
    assert all("answer" not in json.loads(line) or json.loads(line)["answer"] is None
               for line in (run_dir / "iter_00" / "verifier_prompts.jsonl").read_text().splitlines())
    assert not (run_dir / "iter_01").exists(), "the check trains nothing and samples no training data"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["iterations"]["0"]["stages"]) == {"evaluate", "verifier_sample", "verify"}
    run = subprocess.run([sys.executable, "-m", "selfalign.cli", "run", str(recipe), "--out", str(run_dir),
                          "--until", "generate"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "base · evaluate · done earlier, skipped" in run.stdout and "base · verify · done earlier, skipped" in run.stdout
