#!/usr/bin/env bash
# The one prepared GPU check (< 8 minutes on one H100/H200, no network). On the device machine, from the repo root:
#   carry .whl (trl, deepspeed, bitsandbytes wheels for Python 3.12) and .gpu_assets (SmolLM2's tokenizer), then
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   bash benchmarks/gpu_check.sh
# Prepare here (the device image has torch, transformers, peft, accelerate, typer, rich; 46 MB of wheels in all):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_24_x86_64
#     --platform manylinux_2_17_x86_64 --platform any -d .whl bitsandbytes pydantic pydantic-core annotated-types
#     typing-inspection typing-extensions hjson
#   DS_BUILD_OPS=0 .venv/bin/pip wheel --no-deps --no-build-isolation deepspeed==<the venv's version> -w .whl
#     (PyPI has only DeepSpeed's sdist; built with no ops it is a py3-none-any wheel)
#   cp <resolve_model("default")>/{tokenizer*,chat_template.jinja} .gpu_assets/tokenizer/
# Run there as one call: pip install --no-index --no-deps --target /tmp/site .whl/*.whl, PYTHONPATH=/tmp/site, this.
# Measured 2026-11-28 on one H200: 130 s (docs/results.md, "GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1
tokenizer_args=()
[ -d .gpu_assets/tokenizer ] && tokenizer_args=(--tokenizer .gpu_assets/tokenizer)
exec python3 benchmarks/gpu_check.py "${tokenizer_args[@]}" "$@"
