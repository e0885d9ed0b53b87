from .device import cuda_unavailable_reason, device_fallback_warning, resolve_device
from .launch import create_ddp_model, launch
from .logs import PlainTextFormatter, plain_text_log_files
from .optimizer import build_optimizer

__all__ = [
    "build_optimizer",
    "create_ddp_model",
    "cuda_unavailable_reason",
    "device_fallback_warning",
    "launch",
    "PlainTextFormatter",
    "plain_text_log_files",
    "resolve_device",
]
