"""The loop as data: `selfalign run` with stub stages (no model, no engine) through the real executor, manifest,
run lock and display. Runs, skips, resumes after a failure, redoes a stage whose outputs are gone, stops at --until."""

import dataclasses
import io
import json

import pytest

from selfalign.loop import BASE_STAGES, ITERATION_STAGES, plan, run
from selfalign.progress import RunDisplay
from test_loop import _recipe


class Stubs:
    """Stub stages: each writes its declared outputs and records that it ran; `fail` names a (iteration, stage) that
    raises once, as a killed or failing stage would."""

    def __init__(self):
        self.calls, self.fail = [], None

    def stage(self, stage):
        def work(step):
            if self.fail == (step.iteration, stage.name):
                self.fail = None
                raise RuntimeError(f"{stage.name} failed")
            for name in stage.outputs:
                path = step.it_dir / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{step.iteration} {stage.name}\n")
            self.calls.append((step.iteration, stage.name))
            return {"samples": len(self.calls)}

        return dataclasses.replace(stage, work=work)

    def table(self):
        return tuple(self.stage(s) for s in BASE_STAGES), tuple(self.stage(s) for s in ITERATION_STAGES)


def _run(recipe, out, stubs, **options):
    printed = io.StringIO()
    run(recipe, out, display=RunDisplay(2, stream=printed), stage_table=stubs.table(), **options)
    return printed.getvalue().splitlines()


ONE = ["generate", "judge", "filter", "train", "export", "evaluate"]
BASE = [(0, "evaluate"), (0, "verifier_sample"), (0, "verify")]
EVERY = BASE + [(t, name) for t in (1, 2) for name in ONE]


@pytest.fixture
def recipe(tmp_path):
    return _recipe(tmp_path, keep_engine=False)


def test_every_declared_stage_runs_in_order_and_a_rerun_skips_them_all(tmp_path, recipe):
    stubs, out = Stubs(), tmp_path / "run"
    printed = _run(recipe, out, stubs)
    assert stubs.calls == EVERY
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"] and manifest["iterations"]["2"]["stages"]["train"]["status"] == "done"
    assert manifest["iterations"]["1"]["stages"]["filter"]["samples"] == EVERY.index((1, "filter")) + 1  # its result
    assert "iter 2/2 · evaluate · done in" in printed[-1]

    again = Stubs()
    printed = _run(recipe, out, again)
    assert again.calls == []
    assert sum("done earlier, skipped" in line for line in printed) == len(EVERY)


def test_a_failed_stage_is_where_the_rerun_resumes(tmp_path, recipe):
    stubs, out = Stubs(), tmp_path / "run"
    stubs.fail = (2, "train")
    with pytest.raises(RuntimeError, match="train failed"):
        _run(recipe, out, stubs)
    assert stubs.calls == EVERY[:EVERY.index((2, "train"))]
    stages = json.loads((out / "manifest.json").read_text())["iterations"]["2"]["stages"]
    assert list(stages) == ["generate", "judge", "filter"]

    stubs.calls = []
    _run(recipe, out, stubs)
    assert stubs.calls == [(2, "train"), (2, "export"), (2, "evaluate")]


def test_a_stage_whose_outputs_are_gone_runs_again_with_every_stage_after_it(tmp_path, recipe):
    stubs, out = Stubs(), tmp_path / "run"
    _run(recipe, out, stubs)
    (out / "iter_01" / "pairs.jsonl").unlink()
    stubs.calls = []
    _run(recipe, out, stubs)
    assert stubs.calls == EVERY[EVERY.index((1, "filter")):], "later stages read what it writes"


def test_until_stops_after_that_stage_of_the_last_iteration(tmp_path, recipe):
    stubs, out = Stubs(), tmp_path / "run"
    _run(recipe, out, stubs, until="judge", iterations=1)
    assert stubs.calls == BASE + [(1, "generate"), (1, "judge")]
    assert "finished" not in json.loads((out / "manifest.json").read_text())

    other = Stubs()
    _run(recipe, tmp_path / "check", other, until="verify")
    assert other.calls == BASE


def test_the_plan_has_only_the_stages_the_recipe_asks_for(tmp_path):
    from selfalign.executor import Manifest
    from selfalign.recipes import load_recipe

    manifest = Manifest(tmp_path / "manifest.json")
    without_eval, _ = load_recipe(_recipe(tmp_path, eval=None))
    steps = plan(without_eval, tmp_path, manifest, last=1)
    assert [[s.stage.name for s in it] for it in steps] == [[], ONE[:-1]]
    no_check, _ = load_recipe(_recipe(tmp_path, verifier_check=0))
    assert [s.stage.name for s in plan(no_check, tmp_path, manifest, last=1)[0]] == ["evaluate"]
    assert [[s.stage.name for s in it] for it in plan(no_check, tmp_path, manifest, 2, until="judge")][1:] == \
        [ONE, ONE[:2]]
    # The verifier check again after each iteration's evaluation, on the policy it trained; `--until verify` is
    # still the check before any training
    every, _ = load_recipe(_recipe(tmp_path, verifier_check_every_iteration=True))
    assert [[s.stage.name for s in it] for it in plan(every, tmp_path, manifest, 2)][1:] == \
        [ONE + ["recheck_sample", "recheck"]] * 2
    assert [[s.stage.name for s in it] for it in plan(every, tmp_path, manifest, 2, until="verify")] == \
        [[name for _, name in BASE]]
    # Every stage says what configures it, what it leaves and how its own work continues after a kill.
    for stage in BASE_STAGES + ITERATION_STAGES:
        assert stage.config and stage.outputs and stage.resumes, stage.name


@pytest.mark.parametrize("keep", [False, True])
def test_the_engine_is_released_before_a_step_that_does_not_sample_unless_the_run_keeps_it(tmp_path, monkeypatch,
                                                                                            keep):
    """Without keep_engine (a GPU's default) the judge and the trainer get the memory; consecutive sampling steps
    (the base evaluation and the verifier's samples; evaluate t and generate t+1) share one engine."""
    from selfalign.policy_engine import PolicyEngine

    closed_after, stubs = set(), Stubs()
    real_close = PolicyEngine.close

    def close(self, now=False):  # the real close, noting which stub step ran last
        closed_after.add(stubs.calls[-1] if stubs.calls else None)
        real_close(self, now)

    monkeypatch.setattr(PolicyEngine, "close", close)
    _run(_recipe(tmp_path, keep_engine=keep), tmp_path / "run", stubs)
    if keep:
        assert closed_after == {(2, "evaluate")}, "kept: closed once, at the end"
    else:  # before verify (after the verifier's samples) and judge (after generate); never between two samplers
        assert {(0, "verifier_sample"), (1, "generate"), (2, "generate")} <= closed_after
        assert not {(0, "evaluate"), (1, "evaluate")} & closed_after


class RegressingStubs(Stubs):
    """Stubs whose evaluate writes a real eval.json: iteration 1 better than the base, iteration 2 far worse."""

    CORRECT = {0: [0] * 80 + [1] * 20, 1: [1] * 60 + [0] * 40, 2: [0] * 100}

    def stage(self, stage):
        stub = super().stage(stage)
        if stage.name != "evaluate":
            return stub

        def work(step):
            info = stub.work(step)
            (step.it_dir / "eval.json").write_text(json.dumps({"greedy_correct": self.CORRECT[step.iteration]}))
            return info

        return dataclasses.replace(stub, work=work)


@pytest.mark.parametrize("stop", [True, False])
def test_an_iteration_that_turns_worse_says_so_and_stop_on_regression_ends_the_run(tmp_path, stop):
    recipe, out = _recipe(tmp_path, keep_engine=False, iterations=3, stop_on_regression=stop), tmp_path / "run"
    stubs = RegressingStubs()
    stubs.CORRECT = {**stubs.CORRECT, 3: [1] * 100}
    printed = io.StringIO()
    run(recipe, out, display=RunDisplay(3, stream=printed), stage_table=stubs.table())
    manifest = json.loads((out / "manifest.json").read_text())
    health = manifest["iterations"]["2"]["health"]
    assert health["verdict"] == "worse" and health["vs_previous"]["right_to_wrong"] == 60
    assert manifest["iterations"]["1"]["health"]["verdict"] == "better"
    assert any("WARNING: worse than the previous iterate: iteration 2 vs 1: -60.0 points" in line
               for line in printed.getvalue().splitlines())
    ran_third = any(t == 3 for t, _ in stubs.calls)
    if stop:
        assert not ran_third, "the run ended after the iteration that turned worse"
        assert manifest["stopped"]["after_iteration"] == 2 and manifest["stopped"]["best_iteration"] == 1
        assert manifest["stopped"]["best_model"].endswith("iter_01/merged") and manifest["finished"]
    else:
        assert ran_third and "stopped" not in manifest
