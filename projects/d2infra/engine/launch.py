"""Multi-process training on CUDA (Detectron2's ``launch``) or on the CPU (gloo).

Detectron2 v0.6's ``launch`` cannot start several processes without CUDA: its worker asserts
``torch.cuda.is_available()``, hard-codes NCCL and calls ``torch.cuda.set_device``. On a machine
without CUDA, :func:`launch` here starts the processes itself with the gloo backend and sets
Detectron2's local process group, so ``comm`` (gather, synchronize, rank) works as on GPUs.
"""
import logging
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Like :func:`detectron2.engine.launch`; without CUDA, ``num_gpus_per_machine`` CPU processes
    on this machine communicate with gloo."""
    if torch.cuda.is_available() or num_gpus_per_machine * num_machines <= 1:
        d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args,
                  timeout)
        return
    if num_machines != 1:
        raise ValueError("the CPU (gloo) launch runs on one machine: --num-machines must be 1")
    if dist_url in (None, "auto"):
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    logger.info("No CUDA: starting %d CPU processes with the gloo backend", num_gpus_per_machine)
    mp.spawn(_cpu_worker, nprocs=num_gpus_per_machine,
             args=(main_func, num_gpus_per_machine, dist_url, tuple(args), timeout), daemon=False)


def _cpu_worker(rank: int, main_func: Callable, world_size: int, dist_url: str, args: tuple,
                timeout: timedelta) -> None:
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=rank,
                            timeout=timeout)
    # One machine: the local group is every process.
    comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
    # Each process gets an equal share of the cores instead of all of them.
    torch.set_num_threads(max(1, torch.get_num_threads() // world_size))
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """Wrap ``model`` in DDP when there are several processes, like Detectron2's
    ``create_ddp_model``, but give ``device_ids`` only for a CUDA model: DDP rejects them for a CPU
    model."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **kwargs)
