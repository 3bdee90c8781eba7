"""What a training run writes and how it is found again: the fingerprint a resume must match, the `checkpoint-N`
folders, and the final adapter or model at OUT's root (with its model card and the marker that completes it)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import nullcontext
from pathlib import Path

from selfalign.errors import SelfAlignError
from selfalign.io import describe_changes, fingerprint, write_json
from selfalign.training.config import TrainConfig
from selfalign.training.value_head import split_value_head

TRAINING_MARKER = "selfalign_training.json"  # written last: the final weights at OUT's root are complete


class TrainingError(SelfAlignError, ValueError):
    """Training cannot start: no data, too little data for a batch, or an output folder from another run."""


def checkpoints(out_dir: Path) -> list[Path]:
    """OUT/checkpoint-N folders (as transformers' Trainer names them), complete ones only, oldest first."""
    done = [p for p in Path(out_dir).glob("checkpoint-*") if (p / "trainer_state.json").exists()
            and p.name.split("-")[1].isdigit()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out_dir: Path) -> Path | None:
    done = checkpoints(out_dir)
    return done[-1] if done else None


def save_checkpoint(accelerator, out_dir: Path, step: int, epoch: int, batch_in_epoch: int, limit: int) -> None:
    """accelerate's full state (model, optimizer, scheduler, RNG) in a temporary folder, renamed when complete."""
    final = out_dir / f"checkpoint-{step}"
    tmp = out_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", {"global_step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch})
        os.replace(tmp, final)
        for p in checkpoints(out_dir)[:-limit]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def weights_checksum(model) -> str:
    """A hash of every parameter, gathered first where ZeRO-3 holds only a shard on each rank."""
    params = [p for p in model.parameters()]
    gather = nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    digest = hashlib.sha256()
    with gather:
        for name, tensor in model.named_parameters():
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


# Fields that change only how a run is logged or saved: a resumed run may change them.
_BOOKKEEPING = {"report_to", "logging_steps", "save_steps", "save_total_limit", "record_rank_checksums"}


def run_fingerprint(cfg: TrainConfig, records) -> dict:
    """What a checkpoint in OUT depends on: the configuration and a hash of the training records."""
    return {"config": cfg.model_dump(exclude=_BOOKKEEPING), "data_sha256": fingerprint(records=records),
            "records": len(records)}


# What a training run writes at OUT's top level, besides checkpoint-N/ and the final files its marker lists
_OWN_NAMES = {"fingerprint.json", "train_config.json", "train_summary.json", "metrics.jsonl", "logs", "checkpoints",
              "final", ".final.tmp", TRAINING_MARKER}
# `.NAME.*.tmp`: an atomic write in progress (another rank may be writing fingerprint.json while this one looks)
_OWN_PATTERN = re.compile(r"\.?checkpoint-\d+(\.tmp)?|rank-\d+-checksum\.json|\..+\.tmp")


def foreign_files(out_dir: Path) -> list[str]:
    """Names in OUT that no training run wrote. The final weights and their README.md land at OUT's root, so a folder
    holding other files (a project's own README.md, `.`) is never trained into; one with our fingerprint is ours."""
    if not out_dir.is_dir() or (out_dir / "fingerprint.json").exists():
        return []
    ours = _OWN_NAMES | {p.name for p in final_files(out_dir)}
    return sorted(p.name for p in out_dir.iterdir() if p.name not in ours and not _OWN_PATTERN.fullmatch(p.name))


def check_output_folder(out_dir: Path, fingerprint: dict, force: bool) -> list[Path]:
    """Resume only a run of the same configuration and data. Returns what another run left that `force` discards
    (the caller deletes it on the main process); reads only, so every rank raises alike. A folder holding files no
    run wrote is refused, even with `force`: nothing of the user's is replaced or deleted."""
    foreign = foreign_files(out_dir)
    if foreign:
        raise TrainingError(f"{out_dir}: holds files selfalign did not write ({', '.join(foreign[:5])}"
                            f"{', ...' if len(foreign) > 5 else ''}); the final weights and their README.md go to the "
                            "output folder's root, so it is not used, even with --force. Give a new or empty folder")
    saved_path = out_dir / "fingerprint.json"
    left = [*checkpoints(out_dir), *final_files(out_dir)]
    left += [p for p in (out_dir / "checkpoints", out_dir / "final", out_dir / "metrics.jsonl") if p.exists()]
    if not left:
        return []
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else None
    if saved == fingerprint:
        return []
    if not force:
        if saved is None:
            what = "training output with no fingerprint (from an older version or another tool)"
        elif saved["data_sha256"] != fingerprint["data_sha256"]:
            what = f"a run on other data ({saved['records']} records, not these {fingerprint['records']})"
        else:
            what = ("a run with other settings (" + (describe_changes(saved["config"], fingerprint["config"])
                                                     or "its fingerprint differs") + ")")
        raise TrainingError(f"{out_dir} holds {what}; it would resume from there. Use a new --out, or --force to "
                            "discard it and start over")
    return left


def final_files(out_dir: Path) -> list[Path]:
    """The final weights' files at OUT's root, as listed by the marker that completes them."""
    marker = Path(out_dir) / TRAINING_MARKER
    if not marker.exists():
        return []
    listed = json.loads(marker.read_text()).get("files", [])
    return [p for p in (Path(out_dir) / name for name in listed) if p.exists()] + [marker]


def portable_name(model: str) -> str:
    """The base model as another machine names it: a hub id stays one, the embedded model is `default` (resolved at
    load time), a local folder keeps its absolute path (only it can say where it lives)."""
    from selfalign.models import DEFAULT_MODEL

    if model == DEFAULT_MODEL or not Path(model).expanduser().exists():
        return model
    return str(Path(model).expanduser().resolve())


def save_final(accelerator, model, tokenizer, cfg: TrainConfig, out_dir: Path, card_data: dict) -> dict:
    """Save the adapter (LoRA) or the full model at OUT's root, where `PeftModel.from_pretrained(base, OUT)` and
    `from_pretrained(OUT)` look; consolidates ZeRO-3 shards. Files are written into a temporary folder and moved in
    one by one, the marker listing them last: a kill leaves no marker, and a rerun writes them again."""
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 partitions on the main process
    tmp, base = out_dir / ".final.tmp", portable_name(cfg.model)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        (out_dir / TRAINING_MARKER).unlink(missing_ok=True)
        unwrapped = accelerator.unwrap_model(model)
        state_dict = split_value_head(unwrapped, state_dict, tmp)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if (tmp / "adapter_config.json").exists():  # not the local cache path of a dequantized GGUF
            adapter_config = json.loads((tmp / "adapter_config.json").read_text())
            write_json(tmp / "adapter_config.json", {**adapter_config, "base_model_name_or_path": base})
        from selfalign.cards import training_card

        settings = {k: v for k, v in cfg.model_dump(exclude={"model"}).items() if not isinstance(v, (dict, list))}
        training_card(base, cfg.use_peft or cfg.load_in_4bit, cfg.loss_type, settings, card_data["data"],
                      card_data["metrics"]).save(tmp / "README.md")
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            os.replace(tmp / name, out_dir / name)
        shutil.rmtree(tmp, ignore_errors=True)
        write_json(out_dir / TRAINING_MARKER, {"base_model": base, "loss_type": cfg.loss_type, "beta": cfg.beta,
                                               "use_peft": cfg.use_peft, "load_in_4bit": cfg.load_in_4bit,
                                               "files": files})
    accelerator.wait_for_everyone()
    return {"output": str(out_dir), "kind": "lora-adapter" if cfg.use_peft or cfg.load_in_4bit else "full-model"}
