"""The README's "Stage by stage" block runs as written, from generation to evaluation, on the real default model."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LONG = ("selfalign run ", "selfalign check-verifier ")  # whole runs: the loop tests cover them


def readme_stage_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Stage by stage\s+```bash\n(.*?)```", text, re.DOTALL).group(1)
    joined = block.replace("\\\n", " ")
    commands = [line.split("#")[0].strip() for line in joined.splitlines()]
    return [c for c in commands if c.startswith("selfalign ") and not c.startswith(LONG)]


def test_the_block_names_every_stage():
    names = [c.split()[1] for c in readme_stage_commands()]
    assert names == ["info", "generate", "judge", "build-pairs", "train", "export", "eval"]


@pytest.mark.slow
def test_readme_stage_by_stage_runs_as_written(tmp_path):
    shutil.copytree(REPO / "data", tmp_path / "data")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for command in readme_stage_commands():
        argv = [sys.executable, "-m", "selfalign.cli", *shlex.split(command)[1:]]
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    pairs = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert pairs, "build-pairs kept no pair"
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["num_prompts"] == 50 and "greedy_accuracy" in evaluation
    assert (tmp_path / "merged-model" / "config.json").exists()
