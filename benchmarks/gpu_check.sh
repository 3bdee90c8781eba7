#!/usr/bin/env bash
# The one prepared GPU check (< 8 minutes on one H100/H200, no network). On the device machine, from the repo root:
#   carry .whl (trl, deepspeed, bitsandbytes wheels for Python 3.12) and .gpu_assets (SmolLM2's tokenizer), then
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   bash benchmarks/gpu_check.sh
# Prepare here: pip download --no-deps --python-version 3.12 --platform manylinux_2_24_x86_64 ... -d .whl
#   trl deepspeed bitsandbytes; cp -r "$(python -c 'from selfalign.models import resolve_model as r; print(r("default"))')"
#   .gpu_assets/tokenizer (tokenizer files only).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:-}:$PWD" PYTHONUNBUFFERED=1
tokenizer_args=()
[ -d .gpu_assets/tokenizer ] && tokenizer_args=(--tokenizer .gpu_assets/tokenizer)
exec python3 benchmarks/gpu_check.py "${tokenizer_args[@]}" "$@"
