"""RoIAlign whose CPU backward runs on every intra-op thread, with torchvision's exact gradient.

torchvision's CPU ``roi_align`` forward is parallel, but its backward is one serial loop over
(RoI, channel, bin) that recomputes the bilinear weights for every channel. In the embedded
R^3-CNN training step it is the largest single op: a third of the step's CPU time
(``benchmarks/profile_step.py``), while the other cores wait.

The gradient of one input channel depends only on the same channel of the output gradient. So
:func:`roi_align_backward_by_channels` splits the channels into chunks and runs torchvision's own
backward kernel on each chunk in a thread of its own (the op releases the GIL). Within a chunk the
kernel visits the RoIs in the same order as the full call, so every pixel's sum is formed in the
same order: the gradient is bitwise torchvision's, not only close to it.

:class:`ChannelParallelROIAlign` is Detectron2's :class:`~detectron2.layers.ROIAlign` with that
backward; its forward is torchvision's. :func:`parallelize_roi_align_backward` puts it in place of
every ``ROIAlign`` of a built model (the ``ROIPooler`` levels). ``train_net.py`` does so for a model
on the CPU. On CUDA nothing changes: torchvision's CUDA backward is parallel already.
"""
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import torch
from detectron2.layers import ROIAlign
from torch.autograd.function import once_differentiable

__all__ = ["ChannelParallelROIAlign", "parallelize_roi_align_backward",
           "roi_align_backward_by_channels"]

_pool: Optional[ThreadPoolExecutor] = None
_pool_workers = 0
_pool_lock = threading.Lock()


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """One process-wide pool, grown when more workers are asked for."""
    global _pool, _pool_workers
    with _pool_lock:
        if _pool is None or _pool_workers < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="roi_align_bwd")
            _pool_workers = workers
        return _pool


def roi_align_backward_by_channels(grad: torch.Tensor, rois: torch.Tensor, spatial_scale: float,
                                   output_size: Tuple[int, int], input_shape: torch.Size,
                                   sampling_ratio: int, aligned: bool,
                                   chunks: Optional[int] = None) -> torch.Tensor:
    """The gradient of RoIAlign's input: torchvision's ``_roi_align_backward`` run on ``chunks``
    slices of the channels at once (default: ``torch.get_num_threads()``), concatenated.

    ``grad`` is the output's gradient (R, C, h, w), ``rois`` the (R, 5) boxes given to the
    forward, ``input_shape`` the input's (N, C, H, W). Bitwise equal to one full call."""
    op = torch.ops.torchvision._roi_align_backward
    n, c, h, w = input_shape
    chunks = min(chunks or torch.get_num_threads(), c)

    def backward(part: torch.Tensor) -> torch.Tensor:
        return op(part, rois, spatial_scale, output_size[0], output_size[1], n, part.shape[1],
                  h, w, sampling_ratio, aligned)

    if chunks <= 1 or rois.shape[0] == 0:
        return backward(grad)
    parts = [p.contiguous() for p in torch.tensor_split(grad, chunks, dim=1)]
    pool = _thread_pool(chunks - 1)
    # the calling thread takes the first chunk, the pool the others
    futures = [pool.submit(backward, p) for p in parts[1:]]
    out = [backward(parts[0])] + [f.result() for f in futures]
    return torch.cat(out, dim=1)


class _ChannelParallelRoIAlignFunction(torch.autograd.Function):
    """torchvision's ``roi_align`` forward; the backward of :func:`roi_align_backward_by_channels`.
    No gradient flows to the boxes, as in torchvision."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, rois: torch.Tensor, spatial_scale: float,
                output_size: Tuple[int, int], sampling_ratio: int, aligned: bool) -> torch.Tensor:
        ctx.save_for_backward(rois)
        ctx.spatial_scale, ctx.output_size = spatial_scale, output_size
        ctx.sampling_ratio, ctx.aligned, ctx.input_shape = sampling_ratio, aligned, input.shape
        return torch.ops.torchvision.roi_align(input, rois, spatial_scale, output_size[0],
                                               output_size[1], sampling_ratio, aligned)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (rois,) = ctx.saved_tensors
        grad_input = roi_align_backward_by_channels(
            grad.contiguous(), rois, ctx.spatial_scale, ctx.output_size, ctx.input_shape,
            ctx.sampling_ratio, ctx.aligned)
        return grad_input, None, None, None, None, None


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled()


class ChannelParallelROIAlign(ROIAlign):
    """Detectron2's ``ROIAlign`` whose CPU backward uses every intra-op thread (same gradient,
    bitwise). It differs from ``ROIAlign`` only when training in float32 or float64 on the CPU with
    more than one thread and no autocast; otherwise it is ``ROIAlign`` itself."""

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if not (input.device.type == "cpu" and input.requires_grad and torch.is_grad_enabled()
                and input.dtype in (torch.float32, torch.float64) and not input.is_quantized
                and not _autocast_on() and torch.get_num_threads() > 1):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        output_size = self.output_size
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        return _ChannelParallelRoIAlignFunction.apply(
            input, rois.to(dtype=input.dtype), float(self.spatial_scale),
            (int(output_size[0]), int(output_size[1])), int(self.sampling_ratio),
            bool(self.aligned))


def parallelize_roi_align_backward(model: torch.nn.Module) -> int:
    """Replace every :class:`~detectron2.layers.ROIAlign` of ``model`` (exactly that class, not a
    subclass of it) by a :class:`ChannelParallelROIAlign` with the same arguments, and return how
    many. The modules hold no parameters or buffers: ``state_dict`` keys stay the same."""
    replaced = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is ROIAlign:
                replaced.append((parent, name, child))
    for parent, name, child in replaced:
        setattr(parent, name, ChannelParallelROIAlign(child.output_size, child.spatial_scale,
                                                      child.sampling_ratio, child.aligned))
    return len(replaced)
