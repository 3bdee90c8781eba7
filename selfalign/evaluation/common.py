"""What every benchmark shares: its YAML protocol, resumable per-item JSONL files, and the results files."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Callable

from selfalign import yaml_io

from selfalign.io import write_json
from selfalign.versions import package_versions


def _evals_dir() -> Path:
    """evals/ of a source checkout (editable install), else the copy a wheel carries as selfalign/protocols."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists() and (checkout / "evals").is_dir():
        return checkout / "evals"
    return Path(__file__).resolve().parents[1] / "protocols"


EVALS_DIR = _evals_dir()


def load_protocol(benchmark: str, config: Path | None = None) -> dict:
    """`evals/<benchmark>.yaml`, or the file given with --config."""
    path = Path(config) if config else EVALS_DIR / f"{benchmark}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: evaluation protocol not found")
    protocol = yaml_io.load(path)
    if protocol.get("benchmark") != benchmark:
        raise ValueError(f"{path}: field 'benchmark' is {protocol.get('benchmark')!r}, expected {benchmark!r}")
    return protocol


def resumable(path: Path, items: list, key: Callable, work: Callable[[list], list[dict]], chunk: int = 16,
              progress: bool = True) -> dict:
    """Run `work` over the items not yet in `path` (JSONL keyed by `key`), appending each finished chunk.

    A rerun skips finished items; a torn last line from a kill is dropped and its item done again.
    """
    from selfalign.progress import progress_bar

    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            done[row["_key"]] = row
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()), encoding="utf-8")
    todo = [item for item in items if str(key(item)) not in done]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f, progress_bar(total=len(items), initial=len(items) - len(todo),
                                                              desc=path.stem, disable=not progress) as bar:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            for item, row in zip(part, work(part)):
                row["_key"] = str(key(item))
                done[row["_key"]] = row
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(part))
    return done


def write_results(out_dir: Path, benchmark: str, model: str, judge: str | None, numbers: dict, settings: dict,
                  local_judge: bool) -> dict:
    results = {"benchmark": benchmark, "model": model, "judge": judge,
               "judge_note": ("LOCAL JUDGE: numbers are not comparable with the published leaderboards"
                              if local_judge else None),
               "numbers": numbers, "settings": settings, "versions": package_versions(),
               "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_json(out_dir / "results.json", results)
    lines = [f"# {benchmark}: {model}", ""]
    if judge:
        lines += [f"Judge: `{judge}`" + (" (**local judge: not comparable with the leaderboards**)" if local_judge
                                         else ""), ""]
    lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {format_number(v)} |"
                                                 for k, v in flat_numbers(numbers).items()]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return results


def flat_numbers(numbers: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in numbers.items():
        if isinstance(v, dict):
            out.update(flat_numbers(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def format_number(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)
