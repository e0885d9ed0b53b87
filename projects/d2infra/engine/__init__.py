from .launch import create_ddp_model, launch
from .optimizer import build_optimizer

__all__ = ["build_optimizer", "create_ddp_model", "launch"]
