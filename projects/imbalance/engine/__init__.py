from .launch import create_ddp_model, launch

__all__ = ["create_ddp_model", "launch"]
