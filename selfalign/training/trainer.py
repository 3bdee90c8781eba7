"""The preference training loop, on accelerate: reads like the algorithm, top to bottom.

    load policy (+ LoRA) -> tokenize groups -> reference log-probs (one pass, or live)
    -> for each batch: one forward over all sequences, loss, step -> checkpoint -> save adapter or model

Launch on one process with `selfalign train ...`, or on many with
`accelerate launch --config_file accelerate_configs/ddp.yaml -m selfalign.cli train ...`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from selfalign.errors import SelfAlignError
from selfalign.io import records_sha256, write_json
from selfalign.losses import LOSSES
from selfalign.progress import progress_bar
from selfalign.training.build_locks import warn_stale_build_locks
from selfalign.training.config import TrainConfig
from selfalign.training.data import collate, read_preferences, record_kind, tokenize_records
from selfalign.training.forward import batch_logps
from selfalign.training.value_head import add_value_head, split_value_head, values_for
from selfalign.training.objective import preference_loss

log = logging.getLogger(__name__)


class TrainingError(SelfAlignError, ValueError):
    """Training cannot start: no data, too little data for a batch, or an output folder from another run."""


def make_accelerator(cfg: TrainConfig, out_dir: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    handlers = []
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if multi_process and not torch.cuda.is_available():  # on CPU, name gloo explicitly (else one process runs)
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and os.environ.get("LOCAL_RANK", "0") == "0":
        warn_stale_build_locks()  # before DeepSpeed's op compile, which would wait on one silently
    report_to = [r for r in cfg.report_to if r != "wandb" or _wandb_available()]
    # accelerate keeps one state per process; a second train() in the same process (a notebook, the tests) may ask
    # for another precision. The distributed part (PartialState) is kept.
    AcceleratorState._reset_state()
    # None leaves accelerate's own choice (its launch config or --mixed_precision) in force.
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, log_with=report_to or None,
                              mixed_precision="bf16" if cfg.bf16 else None,
                              project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
                              kwargs_handlers=handlers)
    if accelerator.state.deepspeed_plugin is not None:  # we pass no dataloader, so DeepSpeed needs the sizes here
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size
        ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
        ds["train_batch_size"] = (cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps *
                                  accelerator.num_processes)
    return accelerator


def _wandb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def load_policy(cfg: TrainConfig, device: torch.device):
    from transformers import AutoModelForCausalLM

    from selfalign.models import loading, pick_dtype, resolve_model

    kwargs = {"dtype": pick_dtype(device.type, cfg.dtype), "use_safetensors": True}
    if cfg.load_in_4bit:
        if not torch.cuda.is_available():
            raise TrainingError("load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes 4-bit kernels do not run on CPU. "
                               "Use LoRA (use_peft: true, load_in_4bit: false) on CPU.")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=kwargs["dtype"],
                                                           bnb_4bit_use_double_quant=True)
    from transformers.integrations import is_deepspeed_zero3_enabled

    with loading(f"policy {cfg.model!r}"):
        model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model), **kwargs)
    if is_deepspeed_zero3_enabled():  # the accelerate config's zero3_init_flag: no rank held the whole model
        log.warning("ZeRO-3: parameters partitioned while loading (zero.Init); this rank holds %d of %d values",
                    sum(p.numel() for p in model.parameters()),
                    sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.use_peft or cfg.load_in_4bit:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if cfg.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        elif cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM"))
    return model


def _batches(examples: list[dict], cfg: TrainConfig, epoch: int, rank: int, world: int) -> list[list[dict]]:
    """This rank's micro-batches for an epoch: a seeded shuffle, cut into global batches, each split across ranks."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
    per_step = cfg.per_device_train_batch_size * world
    usable = len(order) - len(order) % per_step  # equal work on every rank; the remainder waits for the next epoch
    return [[examples[i] for i in order[start + rank * cfg.per_device_train_batch_size:
                                        start + (rank + 1) * cfg.per_device_train_batch_size]]
            for start in range(0, usable, per_step)]


def examples_in_use(examples: list[dict], cfg: TrainConfig, rank: int, world: int, total_steps: int) -> list[dict]:
    """The examples this rank's first `total_steps` optimizer steps will see (the batches are a seeded function of
    the epoch): a run whose max_steps ends before an epoch does needs no reference for the rest."""
    micro_batches, used, epoch = total_steps * cfg.gradient_accumulation_steps, {}, 0
    while micro_batches > 0:
        batches = _batches(examples, cfg, epoch, rank, world)[:micro_batches]
        for chunk in batches:
            used.update((e["index"], e) for e in chunk)
        micro_batches -= len(batches)
        epoch += 1
    return list(used.values())


@torch.no_grad()
def reference_logps(model, unwrapped, examples: list[dict], cfg: TrainConfig, pad_id: int,
                    device) -> dict[int, torch.Tensor]:
    """One pass of the reference (the starting weights; with LoRA, the adapter disabled) over every example."""
    model.eval()
    disable = unwrapped.disable_adapter() if hasattr(unwrapped, "disable_adapter") else nullcontext()
    out = {}
    with disable:
        for start in range(0, len(examples), cfg.per_device_train_batch_size):
            chunk = examples[start:start + cfg.per_device_train_batch_size]
            logps, _ = batch_logps(model, collate(chunk, pad_id), device, share_prompt(cfg))
            for row, e in enumerate(chunk):  # only the example's own sequences (a short list is padded in a batch)
                out[e["index"]] = logps.view(len(chunk), -1)[row, :len(e["sequences"])].cpu()
    model.train()
    return out


def policy_logps(model, chunk: list[dict], batch: dict, pad_id: int, device, cfg: TrainConfig):
    """(B, S) log-probs and lengths under the policy. KTO's KL column feeds z0, which has no gradient: it runs
    without autograd, so its activations are not kept for a backward that would give them nothing (TRL's
    KTOTrainer does the same)."""
    if not record_kind(cfg.loss_type).mismatched_column:
        logps, lengths = batch_logps(model, batch, device, share_prompt(cfg))
        return logps.view(-1, batch["group_size"]), lengths.view(-1, batch["group_size"])
    own = collate([{**e, "sequences": e["sequences"][:-1]} for e in chunk], pad_id)
    mismatched = collate([{**e, "sequences": e["sequences"][-1:]} for e in chunk], pad_id)
    logps, lengths = batch_logps(model, own, device, share_prompt(cfg))
    with torch.no_grad():
        kl_logps, kl_lengths = batch_logps(model, mismatched, device, share_prompt(cfg))
    return torch.stack([logps, kl_logps], 1), torch.stack([lengths, kl_lengths], 1)


def share_prompt(cfg: TrainConfig) -> bool:
    """The shared-prompt forward needs the model's key/value cache, which gradient checkpointing turns off."""
    return cfg.share_prompt_forward and not cfg.gradient_checkpointing


def checkpoints(out_dir: Path) -> list[Path]:
    """OUT/checkpoint-N folders (as transformers' Trainer names them), complete ones only, oldest first."""
    done = [p for p in Path(out_dir).glob("checkpoint-*") if (p / "trainer_state.json").exists()
            and p.name.split("-")[1].isdigit()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _latest_checkpoint(out_dir: Path) -> Path | None:
    done = checkpoints(out_dir)
    return done[-1] if done else None


def _save_checkpoint(accelerator, out_dir: Path, step: int, epoch: int, batch_in_epoch: int, limit: int) -> None:
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


def peak_memory_gb() -> float:
    """Peak GPU memory allocated by this process, or on CPU its peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    try:  # this process's own high-water mark (getrusage's ru_maxrss survives exec: a child reports its parent's)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # KiB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _weights_checksum(model) -> str:
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
    return {"config": cfg.model_dump(exclude=_BOOKKEEPING), "data_sha256": records_sha256(records),
            "records": len(records)}


def check_output_folder(out_dir: Path, fingerprint: dict, force: bool) -> list[Path]:
    """Resume only a run of the same configuration and data. Returns what another run left that `force` discards
    (the caller deletes it on the main process); reads only, so every rank raises alike."""
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
            changed = sorted(k for k in fingerprint["config"] if saved["config"].get(k) != fingerprint["config"][k])
            what = "a run with other settings (" + ", ".join(
                f"{k}: {saved['config'].get(k)!r} there, {fingerprint['config'][k]!r} now" for k in changed[:3]) + ")"
        raise TrainingError(f"{out_dir} holds {what}; it would resume from there. Use a new --out, or --force to "
                            "discard it and start over")
    return left


def train(cfg: TrainConfig, pairs_path: str | Path, out_dir: str | Path, split: str = "train",
          force: bool = False) -> dict:
    from transformers import get_scheduler

    from selfalign.models import load_tokenizer
    # Data first: bad or empty input fails here, before anything is written.
    out_dir = Path(out_dir)
    records = read_preferences(pairs_path, cfg.loss_type, split)
    identical = sum(1 for r in records if _no_preference(r))
    if identical:  # a pair with chosen == rejected has no gradient to give, only a misleading record count
        log.warning("%s: %d pairs whose chosen equals their rejected were dropped", pairs_path, identical)
        records = [r for r in records if not _no_preference(r)]
    if not records:
        raise TrainingError(f"{pairs_path}: no preference records to train on")
    if record_kind(cfg.loss_type).mismatched_column and len({r.prompt_id for r in records}) < 2:
        raise TrainingError(f"{pairs_path}: {cfg.loss_type} estimates its KL reference point from completions of "
                            "other prompts, and all records answer one prompt")
    fingerprint = run_fingerprint(cfg, records)
    accelerator = make_accelerator(cfg, out_dir)
    torch.manual_seed(cfg.seed)
    discard = check_output_folder(out_dir, fingerprint, force)
    if accelerator.is_main_process:
        for path in discard:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "train_config.json", cfg.model_dump())
        write_json(out_dir / "fingerprint.json", fingerprint)
    accelerator.wait_for_everyone()

    # Every preference record becomes a group of sequences for one forward.
    tokenizer = load_tokenizer(cfg.model)
    examples = tokenize_records(tokenizer, records, cfg.loss_type, cfg.max_length, cfg.max_prompt_length)
    rank, world = accelerator.process_index, accelerator.num_processes
    batches_per_epoch = len(_batches(examples, cfg, 0, rank, world))
    if batches_per_epoch == 0:  # fewer records than one batch: train on them all in a smaller one, as TRL does
        if len(examples) < world:
            raise TrainingError(f"{pairs_path}: {len(examples)} records are fewer than the {world} training processes")
        fitted = len(examples) // world
        log.warning("%s: %d records are fewer than one batch (%d x %d processes); training with batches of %d x %d",
                    pairs_path, len(examples), cfg.per_device_train_batch_size, world, fitted, world)
        cfg = cfg.model_copy(update={"per_device_train_batch_size": fitted})
        batches_per_epoch = len(_batches(examples, cfg, 0, rank, world))
    steps_per_epoch = max(1, batches_per_epoch // cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * steps_per_epoch)

    # Model, reference, optimizer.
    model = load_policy(cfg, accelerator.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": trainable}]
    if LOSSES[cfg.loss_type].needs_value:
        head = add_value_head(model, records)
        groups.append({"params": list(head.parameters()), "lr": cfg.value_learning_rate, "weight_decay": 0.0})
        trainable = trainable + list(head.parameters())
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    # Prepared before any forward: under ZeRO-3 the parameters are partitioned from loading on.
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ref_model, ref_cache, reference_counts = None, None, {}
    if LOSSES[cfg.loss_type].needs_reference:
        # The sampler's log-probs are the reference where they match the trainer's tokens; a pass before the first
        # step (the weights are still the reference's) computes the rest.
        in_use = examples_in_use(examples, cfg, rank, world, total_steps)
        recorded = {e["index"]: torch.tensor(e["sampler_reference"]) for e in in_use
                    if cfg.sampler_reference and e["sampler_reference"] is not None}
        missing = [e for e in in_use if e["index"] not in recorded]
        reference_counts = {"from_sampler": len(recorded), "computed": len(missing),
                            "not_reached": len(examples) - len(in_use)}
        if recorded:
            accelerator.print(f"reference log-probs: {len(recorded)} records from the sampler, {len(missing)} computed")
        if cfg.precompute_ref_log_probs or recorded:
            ref_cache = {**recorded, **(reference_logps(model, accelerator.unwrap_model(model), missing, cfg,
                                                        tokenizer.pad_token_id, accelerator.device) if missing else {})}
        elif not hasattr(accelerator.unwrap_model(model), "disable_adapter"):
            if accelerator.state.deepspeed_plugin is not None:
                raise TrainingError("a live reference with full finetuning is not supported under DeepSpeed: set "
                                 "precompute_ref_log_probs: true")
            ref_model = load_policy(cfg.model_copy(update={"use_peft": False, "gradient_checkpointing": False}),
                                    accelerator.device).to(accelerator.device).eval().requires_grad_(False)
    accelerator.init_trackers("selfalign", config={k: v for k, v in cfg.model_dump().items()
                                                   if isinstance(v, (int, float, str, bool))})

    # Resume: restore the full state and skip the micro-batches already done.
    step, start_epoch, skip = 0, 0, 0
    checkpoint = _latest_checkpoint(out_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        step, start_epoch, skip = state["global_step"], state["epoch"], state["batch_in_epoch"]
        accelerator.print(f"resumed from {checkpoint} at step {step}")

    metrics_path = out_dir / "metrics.jsonl"
    history, started, step_tokens = [], time.perf_counter(), 0
    model.train()
    epoch = start_epoch
    bar = progress_bar(total=total_steps, initial=step, desc="train", unit="steps",
                       disable=not accelerator.is_main_process)
    while step < total_steps:
        batches = _batches(examples, cfg, epoch, rank, world)
        for batch_in_epoch, chunk in enumerate(batches):
            if batch_in_epoch < skip:
                continue
            batch = collate(chunk, tokenizer.pad_token_id)
            step_tokens += int(batch["attention_mask"].sum()) * world
            with accelerator.accumulate(model):
                logps, lengths = policy_logps(model, chunk, batch, tokenizer.pad_token_id, accelerator.device, cfg)
                group = batch["group_size"]
                ref = _reference_for(batch, ref_cache, ref_model, model, accelerator, cfg, group)
                values = values_for(batch, model, accelerator, cfg, group)
                loss, metrics = preference_loss(cfg, logps, ref, lengths, batch, values)
                require_finite(accelerator, loss, "loss", step + 1, out_dir)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                    require_finite(accelerator, torch.as_tensor(norm), "gradient norm", step + 1, out_dir)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            metrics.update(step=step, epoch=epoch, learning_rate=scheduler.get_last_lr()[0], tokens=step_tokens)
            step_tokens = 0
            history.append(metrics)
            if step % cfg.logging_steps == 0 or step == total_steps:
                accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=step)
                if accelerator.is_main_process:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(metrics) + "\n")
            if step % cfg.save_steps == 0 and step < total_steps:
                _save_checkpoint(accelerator, out_dir, step, epoch, batch_in_epoch + 1, cfg.save_total_limit)
            if step >= total_steps:
                break
        skip = 0
        epoch += 1
    bar.close()

    seconds = time.perf_counter() - started
    accelerator.wait_for_everyone()
    card_data = {"data": {"pairs": f"{pairs_path} ({len(records)} records, split {split})", "steps": step},
                 "metrics": {k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, (int, float))}}
    summary = _save_final(accelerator, model, tokenizer, cfg, out_dir, card_data)
    summary.update(steps=step, seconds=seconds, world_size=world, records=len(records),
                   dropped_identical_pairs=identical, tokens=sum(m["tokens"] for m in history),
                   peak_memory_gb=peak_memory_gb(),
                   final_metrics=history[-1] if history else {}, reference=reference_counts)
    if cfg.record_rank_checksums:
        write_json(out_dir / f"rank-{rank}-checksum.json", {"rank": rank, "world_size": world,
                                                            "sha256": _weights_checksum(accelerator.unwrap_model(model))})
    if accelerator.is_main_process:
        write_json(out_dir / "train_summary.json", summary)
    accelerator.end_training()
    return summary


def _reference_for(batch, ref_cache, ref_model, model, accelerator, cfg, group):
    if not LOSSES[cfg.loss_type].needs_reference:
        return None
    if ref_cache is not None:
        rows = [ref_cache[int(i)] for i in batch["index"]]
        ref = torch.zeros(len(rows), group)  # a list shorter than the batch's widest stays padded (and masked)
        for row, values in enumerate(rows):
            ref[row, :len(values)] = values
        return ref.to(accelerator.device)
    with torch.no_grad():
        if ref_model is not None:
            ref, _ = batch_logps(ref_model, batch, accelerator.device, share_prompt(cfg))
        else:
            with accelerator.unwrap_model(model).disable_adapter():
                ref, _ = batch_logps(model, batch, accelerator.device, share_prompt(cfg))
    return ref.view(-1, group)


def _no_preference(record) -> bool:
    return hasattr(record, "chosen") and hasattr(record, "rejected") and record.chosen == record.rejected


def require_finite(accelerator, value: torch.Tensor, what: str, step: int, out_dir: Path) -> None:
    """Stop at the first non-finite loss or gradient (on any process: every rank stops alike, none waits in a
    collective), before it reaches the weights; the last checkpoint stays as it was and no final weights are written."""
    bad = torch.tensor(0.0 if bool(torch.isfinite(value.detach().float()).all()) else 1.0, device=accelerator.device)
    if float(accelerator.reduce(bad, reduction="sum")) == 0:
        return
    shown = float(value.detach().float().flatten()[0]) if value.numel() else float("nan")
    kept = checkpoints(out_dir)
    where = f"the last finite checkpoint is {kept[-1]}" if kept else "no checkpoint was written before it"
    raise TrainingError(f"step {step}: the {what} is {shown} (not finite); training stopped before it changed the "
                        f"weights, {where}, and no final weights were written. Lower the learning rate or check beta, "
                        "the data and max_grad_norm")


TRAINING_MARKER = "selfalign_training.json"  # written last: the final weights at OUT's root are complete


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


def _save_final(accelerator, model, tokenizer, cfg: TrainConfig, out_dir: Path, card_data: dict) -> dict:
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
    final = out_dir
    return {"output": str(final), "kind": "lora-adapter" if cfg.use_peft or cfg.load_in_4bit else "full-model"}
