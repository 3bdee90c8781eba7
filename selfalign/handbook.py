"""`selfalign train --config` for alignment-handbook recipes: their flat YAML (TRL's `DPOConfig` and `ModelConfig`
fields side by side, `model_name_or_path`, `torch_dtype`, `dataset_mixer`, `output_dir`, ...) read as a TrainConfig.

What maps is used; what only steers the handbook's own script (where to write, the hub, evaluation during training)
is named once as ignored; anything else is an error naming every unknown key in one line."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

from selfalign.config_files import load_config, read_mapping
from selfalign.errors import ConfigError
from selfalign.training.config import TrainConfig

log = logging.getLogger(__name__)

RENAMED = {"model_name_or_path": "model", "torch_dtype": "dtype"}
# Keys of handbook recipes that selfalign takes elsewhere or does not need; said once, not an error.
IGNORED = {
    "output_dir": "give --out", "overwrite_output_dir": "--force", "dataset_mixer": "give the data with --pairs",
    "dataset_name": "--pairs", "dataset_splits": "--split", "dataset_configs": "--pairs",
    "dataset_num_proc": "", "preprocessing_num_workers": "", "hub_model_id": "selfalign export --push-to-hub",
    "push_to_hub": "selfalign export --push-to-hub", "hub_strategy": "", "hub_private_repo": "",
    "do_eval": "selfalign eval", "eval_strategy": "selfalign eval", "evaluation_strategy": "selfalign eval",
    "eval_steps": "selfalign eval", "per_device_eval_batch_size": "selfalign eval", "log_level": "--verbose",
    "logging_strategy": "", "logging_first_step": "", "save_strategy": "checkpoints every save_steps",
    "optim": "AdamW always", "attn_implementation": "", "model_revision": "pin a revision in the model id's folder",
    "trust_remote_code": "off; selfalign loads safetensors only", "chat_template": "the model's own",
    "truncation_mode": "", "remove_unused_columns": "", "run_name": "", "tf32": "",
    "use_liger_kernel": "", "ddp_timeout": "", "max_completion_length": "max_length bounds prompt + completion",
}


def read_train_config(path: Path | None, options: dict, set_values: dict) -> TrainConfig:
    """A TrainConfig from `path` (selfalign's fields, or an alignment-handbook recipe), the flags and --set on top."""
    if path is None:
        return load_config(TrainConfig, None, options, set_values)
    values = read_mapping(path)
    renamed = {RENAMED.get(key, key): value for key, value in values.items()}
    ignored = sorted(key for key in renamed if key in IGNORED)
    known = set(TrainConfig.model_fields)
    unknown = sorted(key for key in renamed if key not in known and key not in IGNORED)
    if unknown:
        hints = [f"{key} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(key, known, n=1)) else key
                 for key in unknown]
        raise ConfigError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: not TrainConfig "
                          "fields (see `selfalign train --help`) nor handbook keys selfalign reads")
    if ignored:
        log.warning("%s: ignored here: %s", path, "; ".join(f"{key} ({IGNORED[key]})" if IGNORED[key] else key
                                                             for key in ignored))
    fields = {key: value for key, value in renamed.items() if key in known}
    return load_config(TrainConfig, path, options, set_values, file_values=fields)
