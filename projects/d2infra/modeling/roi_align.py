"""RoIAlign on every intra-op thread of the CPU, with torchvision's exact output and gradient.

torchvision's CPU ``roi_align`` kernels, forward and backward, are serial loops over (RoI,
channel, bin); the backward also recomputes the bilinear weights for every channel. In the
embedded R^3-CNN training step the backward is the largest single op, a quarter to a third of the
step's CPU time (``benchmarks/profile_step.py``), while the other cores wait.

One channel of the output, and of the input's gradient, depends on that channel alone. So
:func:`roi_align_by_channels` and :func:`roi_align_backward_by_channels` split the channels into
chunks and run torchvision's own kernel on each chunk in a thread of its own (the op releases the
GIL). Within a chunk the kernel visits the RoIs in the same order as the full call, so every sum
is formed in the same order: the results are bitwise torchvision's, not only close to them.

:class:`ChannelParallelROIAlign` is Detectron2's :class:`~detectron2.layers.ROIAlign` computed so.
:func:`parallelize_roi_align` puts it in place of every ``ROIAlign`` of a built model (the
``ROIPooler`` levels); ``train_net.py`` does so for a model on the CPU. On CUDA nothing changes.

The chunks other than the first run in threads of a process-wide pool: a ``torch.profiler``
profile records the calling thread's chunk only (about the op's wall time, not its CPU time).
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Tuple

import torch
from detectron2.layers import ROIAlign
from torch.autograd.function import once_differentiable

__all__ = ["ChannelParallelROIAlign", "parallelize_roi_align", "roi_align_backward_by_channels",
           "roi_align_by_channels"]

_pool: Optional[ThreadPoolExecutor] = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _reset_pool_after_fork() -> None:
    """A forked child has none of the parent's threads: it makes a pool of its own."""
    global _pool, _pool_workers, _pool_lock
    _pool, _pool_workers, _pool_lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_reset_pool_after_fork)


def _by_chunks(fn: Callable[[int, int], torch.Tensor], channels: int,
               chunks: Optional[int]) -> torch.Tensor:
    """``fn(start, stop)`` for ``chunks`` (default ``torch.get_num_threads()``) consecutive ranges
    of the channels, all at once (the calling thread takes the first), concatenated along dim 1."""
    global _pool, _pool_workers
    chunks = max(1, min(chunks or torch.get_num_threads(), channels))
    bounds = [channels * i // chunks for i in range(chunks + 1)]
    if chunks == 1:
        return fn(0, channels)

    def run(i: int) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread; these results need no graph
            return fn(bounds[i], bounds[i + 1])

    with _pool_lock:
        if _pool_workers < chunks - 1:  # a larger pool; one in use elsewhere finishes its work
            _pool = ThreadPoolExecutor(max_workers=chunks - 1, thread_name_prefix="roi_align")
            _pool_workers = chunks - 1
        futures = [_pool.submit(run, i) for i in range(1, chunks)]
    return torch.cat([run(0)] + [f.result() for f in futures], dim=1)


def roi_align_by_channels(input: torch.Tensor, rois: torch.Tensor, spatial_scale: float,
                          output_size: Tuple[int, int], sampling_ratio: int, aligned: bool,
                          chunks: Optional[int] = None) -> torch.Tensor:
    """torchvision's ``roi_align`` of ``input`` (N, C, H, W) over ``rois`` (R, 5), run on ``chunks``
    slices of the channels at once (default: ``torch.get_num_threads()``). Bitwise equal to one
    full call."""
    return _by_chunks(lambda c0, c1: torch.ops.torchvision.roi_align(
        input[:, c0:c1], rois, spatial_scale, output_size[0], output_size[1], sampling_ratio,
        aligned), input.shape[1], chunks)


def roi_align_backward_by_channels(grad: torch.Tensor, rois: torch.Tensor, spatial_scale: float,
                                   output_size: Tuple[int, int], input_shape: torch.Size,
                                   sampling_ratio: int, aligned: bool,
                                   chunks: Optional[int] = None) -> torch.Tensor:
    """The gradient of RoIAlign's input: torchvision's ``_roi_align_backward`` of ``grad`` (the
    output's gradient, (R, C, h, w)) for an input of ``input_shape`` (N, C, H, W), run on ``chunks``
    slices of the channels at once (default: ``torch.get_num_threads()``). Bitwise equal to one
    full call."""
    n, c, h, w = input_shape
    return _by_chunks(lambda c0, c1: torch.ops.torchvision._roi_align_backward(
        grad[:, c0:c1], rois, spatial_scale, output_size[0], output_size[1], n, c1 - c0, h, w,
        sampling_ratio, aligned), c, chunks)


class _ChannelParallelRoIAlignFunction(torch.autograd.Function):
    """:func:`roi_align_by_channels` with :func:`roi_align_backward_by_channels` as its backward.
    No gradient flows to the boxes, as in torchvision."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, rois: torch.Tensor, spatial_scale: float,
                output_size: Tuple[int, int], sampling_ratio: int, aligned: bool) -> torch.Tensor:
        ctx.save_for_backward(rois)
        ctx.spatial_scale, ctx.output_size = spatial_scale, output_size
        ctx.sampling_ratio, ctx.aligned, ctx.input_shape = sampling_ratio, aligned, input.shape
        return roi_align_by_channels(input, rois, spatial_scale, output_size, sampling_ratio,
                                     aligned)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (rois,) = ctx.saved_tensors
        grad_input = roi_align_backward_by_channels(
            grad, rois, ctx.spatial_scale, ctx.output_size, ctx.input_shape, ctx.sampling_ratio,
            ctx.aligned)
        return grad_input, None, None, None, None, None


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled()


class ChannelParallelROIAlign(ROIAlign):
    """Detectron2's ``ROIAlign`` on every intra-op thread (same output and gradient, bitwise). It
    differs from ``ROIAlign`` only for float32 or float64 on the CPU with more than one thread and
    no autocast; otherwise, and when scripted or traced, it is ``ROIAlign`` itself."""

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if (torch.jit.is_scripting() or torch.jit.is_tracing() or input.device.type != "cpu"
                or input.dtype not in (torch.float32, torch.float64) or input.is_quantized
                or torch.get_num_threads() < 2 or _autocast_on()):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        size = self.output_size
        size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        args = (rois.to(dtype=input.dtype), float(self.spatial_scale), size,
                int(self.sampling_ratio), bool(self.aligned))
        if input.requires_grad and torch.is_grad_enabled():
            return _ChannelParallelRoIAlignFunction.apply(input, *args)
        return roi_align_by_channels(input, *args)

    def __prepare_scriptable__(self) -> ROIAlign:
        """``torch.jit.script`` scripts Detectron2's ``ROIAlign`` with the same arguments."""
        return ROIAlign(self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)


def parallelize_roi_align(model: torch.nn.Module) -> int:
    """Replace every :class:`~detectron2.layers.ROIAlign` of ``model`` (exactly that class, not a
    subclass of it) by a :class:`ChannelParallelROIAlign` with the same arguments, and return how
    many. The modules hold no parameters or buffers: ``state_dict`` keys stay the same."""
    replaced: List[Tuple[torch.nn.Module, str, ROIAlign]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is ROIAlign:
                replaced.append((parent, name, child))
    for parent, name, child in replaced:
        setattr(parent, name, ChannelParallelROIAlign(child.output_size, child.spatial_scale,
                                                      child.sampling_ratio, child.aligned))
    return len(replaced)
