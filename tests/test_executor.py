"""The loop as data: `selfalign run` with stub stages (no model, no engine) through the real executor, manifest,
run lock and display. Runs, skips, resumes after a failure, redoes a stage whose outputs are gone or whose recipe
settings changed, stops at --until; every stage's result model round-trips through the manifest."""

import dataclasses
import io
import json

import pytest

from selfalign.run.display import RunDisplay
from selfalign.run.loop import BASE_STAGES, ITERATION_STAGES, plan, run
from selfalign.run.results import RESULTS, Manifest
from test_loop import _recipe

# One filled-in result of each stage kind (as the real stages return them; extras where the model allows them).
EXAMPLES = {
    "evaluate": {"model": "m", "engine": "hf", "num_prompts": 100, "greedy_accuracy": 0.25, "majority_at_4": 0.3,
                 "greedy_accuracy_stderr": 0.04, "rephrased_greedy_accuracy": 0.2},
    "verifier_sample": {"prompts": 8, "samples": 64, "engine_seconds": 3.5},
    "verify": {"prompts": 8, "prompts_kept": 5, "records": 5, "coverage": 0.625, "precision": 0.8,
               "precision_ci95": [0.38, 0.96], "pick_accuracy": 0.5, "greedy_accuracy_kept": 0.2,
               "verdict": "stronger", "explanation": "the verifier is stronger than the policy"},
    "judge_train": {"judge": "j", "records": 12, "accuracy_before": 0.5, "accuracy": 0.75,
                    "accuracy_ci95": [0.5, 0.9], "position_consistency": 0.8, "heldout_pairs": 16},
    "judge": {"scorer": "execution", "mode": None, "samples": 64, "scored": 20, "abstained": 44, "mean_score": 0.4,
              "verdict_verified": 20},
    "filter": {"mode": "scpo", "records": 6, "prompts_dropped": 2, "mean_vote_margin": 1.5, "dropped_no_answers": 2},
    "train": {"steps": 4, "final_metrics": {"loss": 0.5, "rewards/margins": 0.25}, "reference": {"computed": 6}},
    "export": {"max_logit_diff": 1e-4},
}
EXAMPLES.update(generate=EXAMPLES["verifier_sample"], recheck_sample=EXAMPLES["verifier_sample"],
                recheck=EXAMPLES["verify"])


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
            return stage.result.model_validate({**EXAMPLES[stage.name], **self.result_of(step)})

        return dataclasses.replace(stage, work=work)

    def result_of(self, step) -> dict:
        """What this call's result changes from the example: generate's prompts count its call."""
        return {"prompts": len(self.calls)} if step.stage.name == "generate" else {}

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
    manifest = Manifest(out / "manifest.json")
    assert manifest.data["finished"] and manifest.result(2, "train").status == "done"
    assert manifest.result(1, "generate").prompts == EVERY.index((1, "generate")) + 1  # its own result
    # Every stage kind's result comes back from the manifest as the model it was returned as, equal to it, with the
    # fingerprint of the recipe settings that stage reads.
    from selfalign.recipes import load_recipe

    loaded, _ = load_recipe(recipe)
    stages = {stage.name: stage for stage in BASE_STAGES + ITERATION_STAGES}
    for t, name in EVERY:
        found = manifest.result(t, name)
        assert type(found) is RESULTS[name] and found.config == stages[name].settings(loaded)
        expected = RESULTS[name].model_validate({**EXAMPLES[name], "seconds": found.seconds, "config": found.config,
                                                 **({"prompts": found.prompts} if name == "generate" else {})})
        assert found == expected, name
    assert manifest.result(0, "evaluate").majority == 0.3 and manifest.result(1, "filter").drops == \
        {"dropped_no_answers": 2}
    assert "iter 2/2 · evaluate · done in" in printed[-1]
    assert printed[-1].endswith("(100 num_prompts, greedy accuracy 25.0%)")

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
    printed = _run(recipe, out, stubs)
    assert stubs.calls == [(2, "train"), (2, "export"), (2, "evaluate")]
    # The stage's declared way of continuing its own work is said where the run resumes.
    assert "resuming at train: from its last checkpoint-N (fingerprinted: same data and config)" in printed


def test_a_stage_whose_recipe_settings_changed_runs_again_with_every_stage_after_it(tmp_path, recipe):
    """With --force and an edited recipe, the first stage that reads a changed setting is where the run resumes;
    stages before it keep their results."""
    from selfalign import yaml_io

    stubs, out = Stubs(), tmp_path / "run"
    _run(recipe, out, stubs)
    data = yaml_io.load(recipe)
    data["train"]["learning_rate"] = 5e-5  # read by the train stage only
    yaml_io.write(recipe, data)
    stubs.calls = []
    with pytest.raises(Exception, match="changed since"):
        _run(recipe, out, stubs)
    _run(recipe, out, stubs, force=True)
    assert stubs.calls == EVERY[EVERY.index((1, "train")):]

    stubs.calls = []
    data["stop_on_regression"] = True  # the loop reads it, no stage: nothing runs again
    yaml_io.write(recipe, data)
    _run(recipe, out, stubs, force=True)
    assert stubs.calls == []


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
    from selfalign.recipes import Recipe, load_recipe

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
    # Every stage says which recipe settings it reads (each one a field the recipe has), what it leaves, how its own
    # work continues after a kill and which result model it records.
    for stage in BASE_STAGES + ITERATION_STAGES:
        assert stage.config and stage.outputs and stage.resumes.value and stage.result, stage.name
        for name in stage.config:
            model = Recipe
            for part in name.split("."):
                assert part in model.model_fields, (stage.name, name)
                model = model.model_fields[part].annotation
                model = next((a for a in getattr(model, "__args__", ()) if hasattr(a, "model_fields")), model)


@pytest.mark.parametrize("keep", [False, True])
def test_the_engine_is_released_before_a_step_that_does_not_sample_unless_the_run_keeps_it(tmp_path, monkeypatch,
                                                                                            keep):
    """Without keep_engine (a GPU's default) the judge and the trainer get the memory; consecutive sampling steps
    (the base evaluation and the verifier's samples; evaluate t and generate t+1) share one engine."""
    from selfalign.run.engine_server import EngineClient

    closed_after, stubs = set(), Stubs()
    real_close = EngineClient.close

    def close(self, now=False):  # the real close, noting which stub step ran last
        closed_after.add(stubs.calls[-1] if stubs.calls else None)
        real_close(self, now)

    monkeypatch.setattr(EngineClient, "close", close)
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
    health = Manifest(out / "manifest.json").health(2)
    assert health["verdict"] == "worse" and health["vs_previous"]["right_to_wrong"] == 60
    assert Manifest(out / "manifest.json").health(1)["verdict"] == "better"
    assert any("WARNING: worse than the previous iterate: iteration 2 vs 1: -60.0 points" in line
               for line in printed.getvalue().splitlines())
    ran_third = any(t == 3 for t, _ in stubs.calls)
    if stop:
        assert not ran_third, "the run ended after the iteration that turned worse"
        assert manifest["stopped"]["after_iteration"] == 2 and manifest["stopped"]["best_iteration"] == 1
        assert manifest["stopped"]["best_model"].endswith("iter_01/merged") and manifest["finished"]
    else:
        assert ran_third and "stopped" not in manifest
