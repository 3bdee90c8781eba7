"""Preference data in as TRL users hold it: JSONL, Parquet, a dataset folder or hub id; standard (plain text) and
conversational forms, explicit or implicit prompt; `prompt_id` optional. Bad rows name the source, row and field."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from selfalign.cli import app
from selfalign.io import DataFileError
from selfalign.records import PreferencePair
from selfalign.training.data import read_preferences

STANDARD = [{"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
            {"prompt": "Name a color.", "chosen": "Red.", "rejected": "Banana."}]
CONVERSATIONAL = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                   "chosen": [{"role": "assistant", "content": r["chosen"]}],
                   "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in STANDARD]
# trl-lib/ultrafeedback_binarized's shape: no prompt column, the user turn leads both conversations, extra columns.
IMPLICIT = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"], "score_chosen": 8.0,
             "score_rejected": 2.0} for r in CONVERSATIONAL]
# TRL's implicit prompt in standard form: plain text whose shared start is the prompt (trl.extract_prompt splits it)
IMPLICIT_TEXT = [{"chosen": "What is 2 + 2? 4.", "rejected": "What is 2 + 2? 5."},
                 {"chosen": "Name a color. Red.", "rejected": "Name a color. Banana."}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path, rows):
    from datasets import Dataset

    Dataset.from_list(rows).to_parquet(str(path))
    return path


def _as_expected(records):
    assert [r.prompt[0].content for r in records] == ["What is 2 + 2?", "Name a color."]
    assert [(r.chosen[0].role, r.chosen[0].content) for r in records] == [("assistant", "4."), ("assistant", "Red.")]
    assert [r.rejected[-1].content for r in records] == ["5.", "Banana."]
    assert all(r.prompt[0].role == "user" and len(r.prompt) == 1 for r in records)
    assert len({r.prompt_id for r in records}) == 2


@pytest.mark.parametrize("form", [STANDARD, CONVERSATIONAL, IMPLICIT], ids=["standard", "conversational", "implicit"])
@pytest.mark.parametrize("container", ["jsonl", "json-array", "parquet", "dataset-folder", "save-to-disk",
                                       "save-to-disk-dict"])
def test_every_form_in_every_container(tmp_path, form, container):
    from datasets import Dataset, DatasetDict

    if container == "jsonl":
        source = _jsonl(tmp_path / "prefs.jsonl", form)
    elif container == "json-array":
        source = tmp_path / "prefs.json"
        source.write_text(json.dumps(form, indent=2))
    elif container == "parquet":
        source = _parquet(tmp_path / "prefs.parquet", form)
    elif container == "save-to-disk":
        source = tmp_path / "saved"
        Dataset.from_list(form).save_to_disk(str(source))
    elif container == "save-to-disk-dict":
        source = tmp_path / "saved-dict"
        DatasetDict({"train": Dataset.from_list(form), "test": Dataset.from_list(form[:1])}).save_to_disk(str(source))
    else:  # a folder that datasets.load_dataset reads the way it reads a hub repository
        (tmp_path / "repo" / "data").mkdir(parents=True)
        _parquet(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet", form)
        source = tmp_path / "repo"
    _as_expected(read_preferences(source, "dpo"))


def test_implicit_prompt_in_text_form_splits_as_trl_does():
    trl = pytest.importorskip("trl")
    for row in IMPLICIT_TEXT + [{"chosen": "The sky is blue.", "rejected": "The sky is green."}]:
        ours = PreferencePair.model_validate(row)
        theirs = trl.extract_prompt(dict(row))
        assert (ours.prompt[0].content, ours.chosen[0].content, ours.rejected[0].content) == \
            (theirs["prompt"], theirs["chosen"], theirs["rejected"])
    records = [PreferencePair.model_validate(r) for r in IMPLICIT_TEXT]
    assert [r.prompt[0].content for r in records] == ["What is 2 + 2?", "Name a color."]
    assert [r.chosen[0].content for r in records] == [" 4.", " Red."]


def test_a_saved_dataset_dict_without_the_split_names_its_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"test": Dataset.from_list(STANDARD)}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataFileError, match="without split 'train' \\(it has test\\)"):
        read_preferences(tmp_path / "saved", "dpo")


@pytest.mark.parametrize("rows, loss, hint", [
    ([{"prompt": "Hi", "completion": "Hello.", "label": True}], "dpo", "pass --loss-type kto"),
    ([{"prompt": "Hi", "completions": ["a", "b"], "scores": [1.0, 0.0]}], "dpo", "pass --loss-type lipo"),
    ([{"prompt": "Hi", "chosen": "a", "rejected": "b"}], "kto", "pass --loss-type dpo"),
])
def test_rows_of_another_kind_name_the_loss_that_reads_them(tmp_path, rows, loss, hint):
    with pytest.raises(DataFileError, match="line 1") as error:
        read_preferences(_jsonl(tmp_path / "rows.jsonl", rows), loss)
    assert hint in str(error.value)


def test_derived_prompt_id_is_stable_and_explicit_ids_are_kept(tmp_path):
    a = read_preferences(_jsonl(tmp_path / "a.jsonl", STANDARD), "dpo")
    b = read_preferences(_jsonl(tmp_path / "b.jsonl", CONVERSATIONAL[::-1]), "dpo")
    assert a[0].prompt_id == b[1].prompt_id and a[0].prompt_id.startswith("p-")
    explicit = read_preferences(_jsonl(tmp_path / "c.jsonl", [{**STANDARD[0], "prompt_id": "q7"}]), "dpo")
    assert explicit[0].prompt_id == "q7"


def test_bad_parquet_row_names_source_row_and_field(tmp_path):
    rows = [STANDARD[0], {"prompt": "x", "chosen": "y", "rejected": None}]
    path = _parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataFileError, match=r"bad\.parquet, row 2, field 'rejected'"):
        read_preferences(path, "dpo")


def test_implicit_prompt_without_a_shared_turn_is_refused(tmp_path):
    row = {"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    with pytest.raises(DataFileError, match="line 1: no 'prompt', and chosen and rejected share no leading messages"):
        read_preferences(_jsonl(tmp_path / "p.jsonl", [row]), "dpo")


def test_one_entry_ranked_list_is_a_clear_error(tmp_path):
    row = {"prompt": "q", "completions": ["only one"], "scores": [1.0]}
    with pytest.raises(DataFileError, match="line 1: a ranked list needs at least 2 completions"):
        read_preferences(_jsonl(tmp_path / "l.jsonl", [row]), "lipo")


def test_unreachable_hub_dataset_is_a_clear_error(tmp_path, tiny_model_path, cli_env):
    """The real hub path (datasets.load_dataset), offline: one line naming the dataset and split, exit 2."""
    env = {**cli_env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "selfalign.cli", "train", "--pairs", "no-such-org/no-such-set",
                             "--split", "test", "--out", str(tmp_path / "run"), "--model", tiny_model_path],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "error: no-such-org/no-such-set: not a file here, and not loadable as a dataset with split 'test'" in \
        result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_train_cli_on_parquet_in_trl_form(tmp_path, tiny_model_path):
    path = _parquet(tmp_path / "ultrafeedback_like.parquet", IMPLICIT)
    result = CliRunner().invoke(app, ["train", "--pairs", str(path), "--out", str(tmp_path / "run"), "--model",
                                      tiny_model_path, "--max-steps", "1", "--per-device-train-batch-size", "2",
                                      "--set", "report_to=[]"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["records"] == 2 and summary["steps"] == 1


def test_pairs_written_by_the_loop_still_read_back(tmp_path):
    pair = PreferencePair(prompt=[{"role": "user", "content": "q"}], chosen=[{"role": "assistant", "content": "a"}],
                          rejected=[{"role": "assistant", "content": "b"}], prompt_id="7", weight=0.25)
    path = _jsonl(tmp_path / "pairs.jsonl", [pair.model_dump(mode="json")])
    assert read_preferences(path, "scpo") == [pair]
