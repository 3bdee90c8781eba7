"""The one YAML reader: alias bombs and duplicate keys refused in one line; ordinary anchors and merges kept."""

from __future__ import annotations

import resource
import time

import pytest
from typer.testing import CliRunner

from selfalign import yaml_io
from selfalign.cli import app

BOMB = """name: bomb
prompts: p.jsonl
generation:
  engine_kwargs:
    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(BOMB)
    assert len(BOMB) < 700
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "bomb.yaml" in message and "alias bomb" in message
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: nothing was expanded
    assert not (tmp_path / "run").exists()


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("name: twice\nprompts: p.jsonl\ntrain:\n  beta: 0.1\n  learning_rate: 1.0e-4\n  beta: 10\n")
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run")])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "twice.yaml, line 6" in message and "duplicate key 'beta' (first on line 4)" in message
    config = tmp_path / "judge.yaml"
    config.write_text("scorer: execution\nscorer: mbr\n")
    result = CliRunner().invoke(app, ["judge", "--samples", str(config), "--out", str(tmp_path / "o.jsonl"),
                                      "--config", str(config)])
    assert result.exit_code == 2 and "duplicate key 'scorer'" in " ".join(result.output.split())


def test_anchors_and_merge_keys_still_work():
    text = "base: &base {beta: 0.1, loss_type: dpo}\ntrain:\n  <<: *base\n  beta: 0.2\nalso: *base\n"
    data = yaml_io.loads(text)
    assert data["train"] == {"beta": 0.2, "loss_type": "dpo"} and data["also"] == {"beta": 0.1, "loss_type": "dpo"}


@pytest.mark.parametrize("text, fragment", [
    ("a: &a [*a]", "refers to itself"),
    ("a: [1, 2", "line 1: not valid YAML"),
    ("a: 1\n b: 2", "line 2: not valid YAML"),
])
def test_bad_yaml_names_the_source_and_line(text, fragment):
    with pytest.raises(yaml_io.YamlError, match=fragment) as refused:
        yaml_io.loads(text, "x.yaml")
    assert str(refused.value).startswith("x.yaml")


@pytest.mark.parametrize("make, fragment", [(lambda p: p.mkdir(), "is not a recipe file"),
                                            (lambda p: p.write_bytes(b"name: \xff\xfe\n"), "not UTF-8 text")])
def test_a_recipe_that_is_a_folder_or_not_text_is_one_line(tmp_path, make, fragment):
    recipe = tmp_path / "recipe.yaml"
    make(recipe)
    for command in (["run", str(recipe), "--out", str(tmp_path / "run")], ["check-verifier", str(recipe)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output
