"""`selfalign judge-train`: iterations of the Self-Taught Evaluator (selfalign/judging/self_taught.py), top to bottom.

    contrasting pairs from the prompts (once, by the starting judge; the last `heldout` kept for measuring)
    accuracy of judge 0 on the held-out pairs
    for t in 1..N: verdicts of judge t-1 -> kept vs rejected verdict pairs -> DPO (LoRA) -> merged judge t
                   -> accuracy of judge t on the held-out pairs

Every step writes its file atomically and is skipped when its file exists, so a rerun after a kill continues; the
trainer resumes from its own checkpoints. OUT/fingerprint.json (the prompts' hash, the starting judge, the settings)
must match before anything in OUT is reused: other prompts or settings are refused, or discarded with `force`.
OUT/summary.json lists each judge's accuracy and position consistency.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from selfalign.errors import SelfAlignError
from selfalign.io import describe_changes, fingerprint, read_jsonl, write_json, write_jsonl
from selfalign.judging.self_taught import (ContrastPair, SelfTaughtConfig, Verdict, build_contrast_pairs,
                                           judge_accuracy, judge_verdicts, verdict_pairs)
from selfalign.records import PromptRecord


class JudgeTrainError(SelfAlignError, ValueError):
    """The self-taught judge cannot go on: too few contrasting pairs, or no verdict pairs to train on."""


def _accuracy(engine, heldout: list[ContrastPair], cfg: SelfTaughtConfig, path: Path) -> dict:
    if not path.exists():
        greedy = judge_verdicts(engine, heldout, 1, 0.0, cfg.verdict_max_new_tokens, reasoning=cfg.reasoning)
        write_jsonl(path.with_name("heldout_verdicts.jsonl"), greedy)
        write_json(path, judge_accuracy(greedy))
    return json.loads(path.read_text())


def check_fingerprint(out: Path, prompts: list[PromptRecord], judge_model: str, cfg: SelfTaughtConfig,
                      force: bool = False) -> None:
    """Reuse OUT's files only for the same prompts, starting judge and settings (more iterations may be added)."""
    expected = {"prompts_sha256": fingerprint(records=prompts), "judge_model": judge_model,
                "settings": cfg.model_dump(mode="json")}
    path = out / "fingerprint.json"
    saved = json.loads(path.read_text()) if path.exists() else None
    ours = [out / "contrast.jsonl", out / "summary.json", *sorted(out.glob("iter_[0-9][0-9]"))]
    if saved != expected and any(p.exists() for p in ours):
        if not force:
            if saved is None:
                what = "judge-train files with no fingerprint"
            else:
                changes = describe_changes(saved, expected) or "its files differ"
                what = f"a judge-train run with other settings ({changes})"
            raise JudgeTrainError(f"{out} holds {what}; reusing its verdicts would mix two runs. Use a new --out, or "
                                  "--force to discard them")
        for p in ours:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    write_json(path, expected)


def train_judge(prompts_path: str | Path, out_dir: str | Path, judge_model: str, iterations: int,
                cfg: SelfTaughtConfig, engine_name: str = "auto", console=None, force: bool = False) -> dict:
    from selfalign.export import export
    from selfalign.generation import get_engine
    from selfalign.io import require_records
    from selfalign.training.trainer import train

    say = console.print if console is not None else print
    out = Path(out_dir)
    prompts = require_records(read_jsonl(prompts_path, PromptRecord), prompts_path, "prompts")
    check_fingerprint(out, prompts, judge_model, cfg, force)
    engine = get_engine(engine_name, judge_model, seed=cfg.seed)
    contrast_path = out / "contrast.jsonl"
    if not contrast_path.exists():
        write_jsonl(contrast_path, build_contrast_pairs(engine, prompts, cfg))
    pairs = read_jsonl(contrast_path, ContrastPair)
    if len(pairs) <= cfg.heldout:
        raise JudgeTrainError(f"{prompts_path}: {len(pairs)} contrasting pairs, not more than the {cfg.heldout} held "
                              "out for measuring: give more prompts or a smaller heldout")
    train_pairs, heldout = pairs[:-cfg.heldout], pairs[-cfg.heldout:]
    summary = {"judge_model": judge_model, "contrast_pairs": len(pairs), "heldout": len(heldout), "iterations": {}}
    summary["iterations"]["0"] = {"judge": judge_model, **_accuracy(engine, heldout, cfg, out / "iter_00" /
                                                                    "accuracy.json")}
    say(f"judge 0 ({judge_model}): {summary['iterations']['0']}")
    judge = judge_model
    for t in range(1, iterations + 1):
        it = out / f"iter_{t:02d}"
        verdicts_path = it / "verdicts.jsonl"
        if not verdicts_path.exists():
            engine.load_policy(judge)
            write_jsonl(verdicts_path, judge_verdicts(engine, train_pairs, cfg.verdicts, cfg.temperature,
                                                      cfg.verdict_max_new_tokens, seed=cfg.seed + t,
                                                      reasoning=cfg.reasoning))
        records, report = verdict_pairs(read_jsonl(verdicts_path, Verdict), seed=cfg.seed + t)
        write_json(it / "judge_pairs.report.json", report)
        if not records:
            raise JudgeTrainError(f"iteration {t}: judge {judge!r} gave no prompt both a right and a wrong verdict "
                                  f"({report}); there is nothing to learn from (more verdicts or prompts may help)")
        write_jsonl(it / "judge_pairs.jsonl", records)
        merged = it / "merged"
        if not (merged / "config.json").exists():
            engine.close()  # the trainer gets the memory
            train(cfg.train.model_copy(update={"model": judge}), it / "judge_pairs.jsonl", it / "checkpoint")
            export(it / "checkpoint", merged, force=True, card_info={"name": f"self-taught judge, iteration {t}",
                                                                     "base_model": judge})
            engine = get_engine(engine_name, str(merged), seed=cfg.seed)
        judge = str(merged)
        engine.load_policy(judge)
        summary["iterations"][str(t)] = {"judge": judge, "train_records": len(records), **report,
                                         **_accuracy(engine, heldout, cfg, it / "accuracy.json")}
        say(f"judge {t}: {summary['iterations'][str(t)]}")
        write_json(out / "summary.json", summary)
    engine.close()
    write_json(out / "summary.json", summary)
    return summary
