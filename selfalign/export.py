"""Export a trained policy as a plain Hugging Face checkpoint: LoRA folded in, sharded safetensors, tokenizer, chat
template, generation config and a model card of the lineage. Loads with transformers or vLLM, no selfalign needed.

Sources: a training output (`OUT/`, adapter or full model; `OUT/final/` of earlier versions), a run folder
(`runs/NAME`, with `--iteration`), or a DeepSpeed checkpoint folder (ZeRO shards are consolidated first).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from selfalign.errors import SelfAlignError
from selfalign.io import atomic_dir, check_replaceable, prepare_output

log = logging.getLogger(__name__)
VERIFY_PROMPTS = ["What is 7 + 5?", "Write one sentence about the sea.", "List three colors."]
# fp32 must match to rounding (max |Δlogit|); half precision is judged on the mean |Δlogit| and top-1 agreement, since
# a bf16 weight moves some of 49k logits by ~1 while leaving the distribution's shape alone.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.05}
MIN_TOP1_AGREEMENT = 0.9
EXPORT_MARKER = "selfalign_lineage.json"  # every export holds it; only a folder holding it is ever replaced


class ExportError(SelfAlignError, RuntimeError):
    pass


def find_weights(source: Path, iteration: int | None = None) -> Path:
    """The folder holding the adapter or model weights for `source`."""
    source = Path(source)
    if (source / "manifest.json").exists():  # a run folder of `selfalign run`
        from selfalign.run.results import Manifest

        manifest = Manifest(source / "manifest.json")
        done = [t for t in manifest.iterations() if manifest.result(t, "train") is not None]
        if not done:
            raise ExportError(f"{source}: no iteration has finished training yet")
        chosen = iteration if iteration is not None else done[-1]
        if chosen not in done:
            raise ExportError(f"{source}: iteration {chosen} has not finished training (finished: {done})")
        source = source / f"iter_{chosen:02d}" / "checkpoint"
    root_weights = (source / "adapter_config.json").exists() or (source / "config.json").exists()
    if not root_weights and (source / "final").is_dir():  # a training output of an earlier version
        source = source / "final"
    if (source / "adapter_config.json").exists() or (source / "config.json").exists():
        return source
    if list(source.glob("global_step*")) or list(source.glob("**/zero_pp_rank_*")) or (source / "pytorch_model").is_dir():
        return source
    raise ExportError(f"{source}: no adapter, model or DeepSpeed checkpoint found")


def _load_zero_checkpoint(folder: Path, base_model: str):
    """Consolidate ZeRO-2/3 shards into one fp32 state dict and load it into the base architecture."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    from selfalign.models import resolve_model

    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(folder))
    model = AutoModelForCausalLM.from_pretrained(resolve_model(base_model), dtype=torch.float32)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ExportError(f"{folder}: ZeRO checkpoint does not match {base_model} (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return model


def load_trained(weights: Path, base_model: str | None = None):
    """(model used for the reference logits, merged plain model, base model name, tokenizer source)."""
    from selfalign.models import loading

    with loading(f"trained weights in {weights}"):
        return _load_trained(weights, base_model)


def _load_trained(weights: Path, base_model: str | None = None):
    from transformers import AutoModelForCausalLM

    from selfalign.models import resolve_model

    if (weights / "adapter_config.json").exists():
        from peft import PeftModel

        adapter_config = json.loads((weights / "adapter_config.json").read_text())
        lineage = _read_json(weights / "selfalign_lineage.json")
        base = base_model or lineage.get("base_model") or adapter_config["base_model_name_or_path"]
        # QLoRA adapters merge into the unquantized base weights (dequantize, then merge).
        base_weights = AutoModelForCausalLM.from_pretrained(resolve_model(base), dtype=torch.float32,
                                                            use_safetensors=True)
        adapted = PeftModel.from_pretrained(base_weights, str(weights)).eval()
        return adapted, None, base, weights
    if (weights / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32, use_safetensors=True).eval()
        lineage = _read_json(weights / "selfalign_lineage.json")
        return model, model, lineage.get("base_model", str(weights)), weights
    if base_model is None:
        raise ExportError(f"{weights}: a DeepSpeed checkpoint needs --base-model (its architecture)")
    model = _load_zero_checkpoint(weights, base_model).eval()
    return model, model, base_model, resolve_model(base_model)


def require_finite_weights(model, weights: Path) -> None:
    """Refuse weights holding NaN or inf, naming the tensors (a merge would spread them into every layer)."""
    bad = []
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{name} ({count} of {tensor.numel()})")
    if bad:
        raise ExportError(f"{weights}: {len(bad)} tensor(s) hold values that are not finite (NaN or inf): "
                          f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}; nothing was exported. Training "
                          "diverged before these weights were saved: train again with a lower learning rate")


def _read_json(path: Path) -> dict:
    """A lineage file; for an export's `selfalign_lineage.json`, a training output's `selfalign_training.json` beside
    it serves as well."""
    from selfalign.training.outputs import TRAINING_MARKER

    for candidate in (path, path.with_name(TRAINING_MARKER)):
        if candidate.exists():
            return json.loads(candidate.read_text())
    return {}


@torch.no_grad()
def _logits(model, tokenizer) -> list[torch.Tensor]:
    out = []
    for prompt in VERIFY_PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        out.append(model(input_ids=ids.to(model.device)).logits.float().cpu())
    return out


def compare_logits(merged: list[torch.Tensor], trained: list[torch.Tensor], dtype: torch.dtype):
    """(passed, description, max |Δlogit|) of the merged model's logits against the trained model's."""
    diffs = torch.cat([(a - b).abs().flatten() for a, b in zip(merged, trained)])
    top1 = torch.cat([(a.argmax(-1) == b.argmax(-1)).flatten() for a, b in zip(merged, trained)]).float().mean()
    max_diff, mean_diff, tolerance = float(diffs.max()), float(diffs.mean()), TOLERANCE[dtype]
    if dtype == torch.float32:
        return max_diff <= tolerance, f"max |Δlogit| {max_diff:.3g} (tolerance {tolerance}, fp32)", max_diff
    ok = mean_diff <= tolerance and float(top1) >= MIN_TOP1_AGREEMENT
    return ok, (f"mean |Δlogit| {mean_diff:.3g} (tolerance {tolerance}), max {max_diff:.3g}, top-1 agreement "
                f"{float(top1):.3f} (at least {MIN_TOP1_AGREEMENT}), {dtype}"), max_diff


def export(source: str | Path, out: str | Path, dtype: str = "float32", iteration: int | None = None,
           force: bool = False, base_model: str | None = None, card_info: dict | None = None,
           push_to_hub: str | None = None, max_shard_size: str = "2GB") -> dict:
    """Merge, save to a temporary folder, verify the reload against the trained model, then rename into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfalign.models import pick_dtype

    out = prepare_output(out, kind="folder")  # a bad target fails before minutes of merging
    check_replaceable(out, EXPORT_MARKER, [source])  # never '.', an input, or a folder of someone else's files
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; pass --force to replace it")
    weights = find_weights(Path(source), iteration)
    reference_model, merged, base, tokenizer_source = load_trained(weights, base_model)
    require_finite_weights(reference_model, weights)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    reference_logits = _logits(reference_model, tokenizer)
    if merged is None:
        merged = reference_model.merge_and_unload()
    torch_dtype = pick_dtype("cpu", dtype)
    merged = merged.to(torch_dtype)
    lineage = {**_read_json(weights / "selfalign_lineage.json"), **(card_info or {}), "base_model": base}
    with atomic_dir(out, force=True, marker=EXPORT_MARKER, inputs=[source]) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        if getattr(merged, "generation_config", None) is not None:
            merged.generation_config.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, use_safetensors=True).eval()
        ok, verification, max_diff = compare_logits(_logits(reloaded, tokenizer), reference_logits, torch_dtype)
        if not ok:
            raise ExportError(f"verification failed: {verification}; nothing was written to {out}")
        verification = f"reloaded with plain AutoModelForCausalLM on {len(VERIFY_PROMPTS)} prompts: {verification}"
        lineage["verification"] = verification
        from selfalign.cards import export_card

        export_card(lineage).save(tmp / "README.md")
        (tmp / EXPORT_MARKER).write_text(json.dumps(lineage, indent=2, default=str))
    if push_to_hub:
        from huggingface_hub import HfApi

        HfApi().upload_folder(folder_path=str(out), repo_id=push_to_hub)  # token from HF_TOKEN / the login cache
    return {"out": str(out), "source": str(weights), "base_model": base, "dtype": dtype,
            "max_logit_diff": max_diff, "verification": verification}
