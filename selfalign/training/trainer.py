"""The preference training loop, on accelerate: reads like the algorithm, top to bottom.

    load policy (+ LoRA) -> tokenize groups -> reference log-probs (one pass, or live)
    -> for each batch: one forward over all sequences, loss, step -> checkpoint -> save adapter or model

Launch on one process with `selfalign train ...`, or on many with
`accelerate launch --config_file accelerate_configs/ddp.yaml -m selfalign.cli train ...`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfalign.io import write_json
from selfalign.losses import LOSSES
from selfalign.progress import progress_bar
from selfalign.training.build_locks import warn_stale_build_locks
from selfalign.training.config import TrainConfig
from selfalign.training.data import collate, read_preferences, record_kind, tokenize_records
from selfalign.training.forward import batch_logps
from selfalign.training.outputs import (TrainingError, latest_checkpoint, save_checkpoint, save_final,
                                        weights_checksum, check_output_folder, checkpoints, run_fingerprint)
from selfalign.training.value_head import add_value_head, values_for
from selfalign.training.objective import preference_loss

log = logging.getLogger(__name__)


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
    # for another precision. The distributed part (PartialState) is kept. accelerate 1.15 offers no public call for
    # this; `_reset_state` is the one its own tests use.
    AcceleratorState._reset_state()
    # None leaves accelerate's own choice (its launch config or --mixed_precision) in force.
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, log_with=report_to or None,
                              mixed_precision="bf16" if training_precision_of(cfg).dtype == "bfloat16" else None,
                              project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
                              kwargs_handlers=handlers)
    if accelerator.state.deepspeed_plugin is not None:  # we pass no dataloader, so DeepSpeed needs the sizes here
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.per_device_train_batch_size
        ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
        ds["train_batch_size"] = (cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps *
                                  accelerator.num_processes)
    return accelerator


def training_precision_of(cfg: TrainConfig):
    """bf16 autocast or fp32 (`bf16` unset: bf16 where the hardware computes it natively). Under DeepSpeed its own
    config decides, as the launcher's `--mixed_precision` does when `bf16` is unset on a machine without bf16."""
    from selfalign.precision import Precision, training_precision

    if cfg.bf16 is None and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return Precision("float32", "DeepSpeed: its config decides")
    return training_precision(cfg.bf16)


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


@dataclass
class TrainingRun:
    """One run's pieces, in the order setup makes them; the training loop advances `step`, `epoch` and `skip`."""
    cfg: TrainConfig
    out_dir: Path
    accelerator: object
    tokenizer: object
    examples: list[dict]
    total_steps: int
    model: object = None
    trainable: list = field(default_factory=list)
    optimizer: object = None
    scheduler: object = None
    ref_model: object = None  # a live reference (full finetuning without a precomputed pass)
    ref_cache: dict | None = None  # example index -> reference log-probs
    reference_counts: dict = field(default_factory=dict)
    step: int = 0
    epoch: int = 0
    skip: int = 0  # micro-batches of `epoch` already done (a resumed run)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


def train(cfg: TrainConfig, pairs_path: str | Path, out_dir: str | Path, split: str = "train",
          force: bool = False) -> dict:
    """Read the data, set up, train, save (torchtune's setup / train / cleanup). Returns the run's summary."""
    records, identical = _read_training_records(cfg, pairs_path, split)  # bad input fails before anything is written
    run = _setup(cfg, records, Path(out_dir), force, pairs_path)
    history, seconds = _train_steps(run)
    return _finish(run, history, seconds, records, identical, pairs_path, split)


def _read_training_records(cfg: TrainConfig, pairs_path, split: str) -> tuple[list, int]:
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
    return records, identical


def _setup(cfg: TrainConfig, records: list, out_dir: Path, force: bool, pairs_path) -> TrainingRun:
    from selfalign.models import load_tokenizer

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
    cfg, total_steps = _fit_batches(cfg, examples, accelerator, pairs_path)
    run = TrainingRun(cfg, out_dir, accelerator, tokenizer, examples, total_steps)
    _build_model(run, records)
    _build_reference(run)
    accelerator.init_trackers("selfalign", config={k: v for k, v in cfg.model_dump().items()
                                                   if isinstance(v, (int, float, str, bool))})
    _resume(run)
    return run


def _fit_batches(cfg: TrainConfig, examples: list[dict], accelerator, pairs_path) -> tuple[TrainConfig, int]:
    """(the config, with a smaller batch where the data is smaller than one, as TRL trains; the run's total steps)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    batches_per_epoch = len(_batches(examples, cfg, 0, rank, world))
    if batches_per_epoch == 0:
        if len(examples) < world:
            raise TrainingError(f"{pairs_path}: {len(examples)} records are fewer than the {world} training processes")
        fitted = len(examples) // world
        log.warning("%s: %d records are fewer than one batch (%d x %d processes); training with batches of %d x %d",
                    pairs_path, len(examples), cfg.per_device_train_batch_size, world, fitted, world)
        cfg = cfg.model_copy(update={"per_device_train_batch_size": fitted})
        batches_per_epoch = len(_batches(examples, cfg, 0, rank, world))
    steps_per_epoch = max(1, batches_per_epoch // cfg.gradient_accumulation_steps)
    return cfg, cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * steps_per_epoch)


def _build_model(run: TrainingRun, records: list) -> None:
    """The policy (+ LoRA, + a value head for DRO), its optimizer and schedule, prepared by accelerate."""
    from transformers import get_scheduler

    cfg = run.cfg
    model = load_policy(cfg, run.accelerator.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": trainable}]
    if LOSSES[cfg.loss_type].needs_value:
        head = add_value_head(model, records)
        groups.append({"params": list(head.parameters()), "lr": cfg.value_learning_rate, "weight_decay": 0.0})
        trainable = trainable + list(head.parameters())
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_training_steps=run.total_steps,
                              num_warmup_steps=int(cfg.warmup_ratio * run.total_steps))
    # Prepared before any forward: under ZeRO-3 the parameters are partitioned from loading on.
    run.model, run.optimizer, run.scheduler = run.accelerator.prepare(model, optimizer, scheduler)
    run.trainable = trainable


def _build_reference(run: TrainingRun) -> None:
    """The sampler's log-probs are the reference where they match the trainer's tokens; a pass before the first step
    (the weights are still the reference's) computes the rest, or a live reference model does."""
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    if not LOSSES[cfg.loss_type].needs_reference:
        return
    in_use = examples_in_use(run.examples, cfg, run.rank, run.world, run.total_steps)
    recorded = {e["index"]: torch.tensor(e["sampler_reference"]) for e in in_use
                if cfg.sampler_reference and e["sampler_reference"] is not None}
    probe = {}
    if recorded:
        recorded, probe = _checked_sampler_reference(run, [e for e in in_use if e["index"] in recorded], recorded)
    missing = [e for e in in_use if e["index"] not in recorded]
    run.reference_counts = {"from_sampler": len(recorded), "computed": len(missing),
                            "not_reached": len(run.examples) - len(in_use), **({"probe": probe} if probe else {})}
    if probe:
        accelerator.print(f"reference log-probs: {len(recorded)} records from the sampler, {len(missing)} computed "
                          f"(sampler vs trainer on {probe['records']} records: max |diff| {probe['max_abs_diff']:.2e} "
                          f"nats, tolerance {probe['tolerance']})")
    if cfg.precompute_ref_log_probs or recorded:
        computed = reference_logps(model, accelerator.unwrap_model(model), missing, cfg, run.tokenizer.pad_token_id,
                                   accelerator.device) if missing else {}
        run.ref_cache = {**recorded, **computed}
    elif not hasattr(accelerator.unwrap_model(model), "disable_adapter"):
        if accelerator.state.deepspeed_plugin is not None:
            raise TrainingError("a live reference with full finetuning is not supported under DeepSpeed: set "
                                "precompute_ref_log_probs: true")
        run.ref_model = load_policy(cfg.model_copy(update={"use_peft": False, "gradient_checkpointing": False}),
                                    accelerator.device).to(accelerator.device).eval().requires_grad_(False)


def _checked_sampler_reference(run: TrainingRun, candidates: list[dict], recorded: dict) -> tuple[dict, dict]:
    """The sampler's log-probs are the reference only where they are the trainer's own step-0 log-probs: a sampler
    in another precision (bf16 vLLM, fp32 training) or with other kernels disagrees with it, and DPO would then train
    against a log-ratio that is not zero at step 0. The first `sampler_reference_probe` records are computed by the
    trainer (before any step, so these are the reference's weights) and compared, sequence by sequence; beyond
    `sampler_reference_tolerance` nats none of the sampler's values is used and the trainer computes them all.
    Returns (the records whose sampler values are kept, the probe's numbers)."""
    cfg = run.cfg
    probed = candidates[:cfg.sampler_reference_probe]
    own = reference_logps(run.model, run.accelerator.unwrap_model(run.model), probed, cfg, run.tokenizer.pad_token_id,
                          run.accelerator.device)
    gaps = torch.cat([(own[e["index"]] - recorded[e["index"]]).abs() for e in probed])
    probe = {"records": len(probed), "sequences": int(gaps.numel()), "max_abs_diff": float(gaps.max()),
             "mean_abs_diff": float(gaps.mean()), "tolerance": cfg.sampler_reference_tolerance}
    probe["used"] = probe["max_abs_diff"] <= cfg.sampler_reference_tolerance
    if not probe["used"]:
        log.warning("the sampler's log-probs differ from the trainer's own by up to %.3g nats per sequence (tolerance "
                    "%g; another precision?): the reference is computed by the trainer", probe["max_abs_diff"],
                    cfg.sampler_reference_tolerance)
        return {}, probe
    # the probed records keep the trainer's own values: they are the exact reference
    return {**recorded, **own}, probe


def _resume(run: TrainingRun) -> None:
    """Restore the full state of the last checkpoint and skip the micro-batches already done."""
    checkpoint = latest_checkpoint(run.out_dir)
    if checkpoint is None:
        return
    run.accelerator.load_state(str(checkpoint))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    run.step, run.epoch, run.skip = state["global_step"], state["epoch"], state["batch_in_epoch"]
    run.accelerator.print(f"resumed from {checkpoint} at step {run.step}")


def _train_steps(run: TrainingRun) -> tuple[list[dict], float]:
    """Optimizer steps until `total_steps`: micro-batches accumulate, each step is logged and checkpointed."""
    cfg, accelerator = run.cfg, run.accelerator
    history, started, step_tokens = [], time.perf_counter(), 0
    run.model.train()
    bar = progress_bar(total=run.total_steps, initial=run.step, desc="train", unit="steps",
                       disable=not accelerator.is_main_process)
    while run.step < run.total_steps:
        for batch_in_epoch, chunk in enumerate(_batches(run.examples, cfg, run.epoch, run.rank, run.world)):
            if batch_in_epoch < run.skip:
                continue
            batch = collate(chunk, run.tokenizer.pad_token_id)
            step_tokens += int(batch["attention_mask"].sum()) * run.world
            metrics = _micro_step(run, chunk, batch)
            if not accelerator.sync_gradients:
                continue
            run.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            metrics.update(step=run.step, epoch=run.epoch, learning_rate=run.scheduler.get_last_lr()[0],
                           tokens=step_tokens)
            step_tokens = 0
            history.append(metrics)
            _log_step(run, metrics)
            if run.step % cfg.save_steps == 0 and run.step < run.total_steps:
                save_checkpoint(accelerator, run.out_dir, run.step, run.epoch, batch_in_epoch + 1,
                                 cfg.save_total_limit)
            if run.step >= run.total_steps:
                break
        run.skip = 0
        run.epoch += 1
    bar.close()
    return history, time.perf_counter() - started


def _micro_step(run: TrainingRun, chunk: list[dict], batch: dict) -> dict:
    """One forward over all of the batch's sequences, the loss, the backward; the optimizer steps when accumulation
    is complete. Stops before a non-finite loss or gradient reaches the weights."""
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    with accelerator.accumulate(model):
        logps, lengths = policy_logps(model, chunk, batch, run.tokenizer.pad_token_id, accelerator.device, cfg)
        group = batch["group_size"]
        ref = _reference_for(batch, run.ref_cache, run.ref_model, model, accelerator, cfg, group)
        values = values_for(batch, model, accelerator, cfg, group)
        loss, metrics = preference_loss(cfg, logps, ref, lengths, batch, values)
        require_finite(accelerator, loss, "loss", run.step + 1, run.out_dir)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.max_grad_norm > 0:
            norm = accelerator.clip_grad_norm_(run.trainable, cfg.max_grad_norm)
            require_finite(accelerator, torch.as_tensor(norm), "gradient norm", run.step + 1, run.out_dir)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    return metrics


def _log_step(run: TrainingRun, metrics: dict) -> None:
    if run.step % run.cfg.logging_steps == 0 or run.step == run.total_steps:
        run.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=run.step)
        if run.accelerator.is_main_process:
            with open(run.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")


def _finish(run: TrainingRun, history: list[dict], seconds: float, records: list, identical: int, pairs_path,
            split: str) -> dict:
    """Save the final weights with their card, the summary, and (for tests) each rank's weight checksum."""
    accelerator, out_dir = run.accelerator, run.out_dir
    accelerator.wait_for_everyone()
    last = history[-1] if history else {}
    card_data = {"data": {"pairs": f"{pairs_path} ({len(records)} records, split {split})", "steps": run.step},
                 "metrics": {k: v for k, v in last.items() if isinstance(v, (int, float))}}
    summary = save_final(accelerator, run.model, run.tokenizer, run.cfg, out_dir, card_data)
    summary.update(steps=run.step, seconds=seconds, world_size=run.world, records=len(records),
                   dropped_identical_pairs=identical, tokens=sum(m["tokens"] for m in history),
                   peak_memory_gb=peak_memory_gb(), final_metrics=last, reference=run.reference_counts,
                   precision=training_precision_of(run.cfg).as_dict())
    if run.cfg.record_rank_checksums:
        checksum = weights_checksum(accelerator.unwrap_model(run.model))
        write_json(out_dir / f"rank-{run.rank}-checksum.json", {"rank": run.rank, "world_size": run.world,
                                                                "sha256": checksum})
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


