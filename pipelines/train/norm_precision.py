"""BatchNorm in float32 under bf16 autocast: keeps BatchNorm on cuDNN's kernels (issue 13).

Under ``torch.autocast(dtype=torch.bfloat16)`` a convolution hands BatchNorm a bfloat16 input
while BatchNorm's weight, bias and running statistics stay float32. PyTorch then leaves cuDNN:
its ``_batch_norm_impl_index`` takes ``cudnn_batch_norm`` only for float32 / float64 input, or
float16 input with float32 parameters, never for bfloat16, and runs ``native_batch_norm``
instead (checked on this torch, 2.14 with cuDNN 9.24, by tests/test_norm_precision.py).

:func:`batchnorm_float32` makes every BatchNorm layer of a module, when it gets bfloat16 input
with float32 parameters, compute

    ``y = BN_fp32(float32(x))``, returned as bfloat16

i.e. cuDNN's float32 BatchNorm on the exactly up-cast input (statistics and running statistics
in float32, as before), the output rounded to bfloat16 once, so that the next layers see the
same dtype as without the switch. In every other case (float32 training, a model cast to
bfloat16 as a whole, CPU) the layer runs unchanged. The layers keep their class family
(``isinstance(m, nn.BatchNorm2d)`` holds), parameters, buffers and ``state_dict`` keys.

Cost: two extra elementwise casts per layer (up before, down after); whether cuDNN's kernel
pays for them is a GPU measurement (``benchmarks/gpu_step.py --bn-float32``), not made yet -
which is why this is a switch of the benchmark and not of the recipe.
"""

from __future__ import annotations

import torch
from torch import nn

_BatchNorm = nn.modules.batchnorm._BatchNorm


class _Float32Input:
    """Mixin for a BatchNorm class: bfloat16 input with float32 parameters runs in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ref = self.weight if self.weight is not None else self.running_mean
        if x.dtype == torch.bfloat16 and ref is not None and ref.dtype == torch.float32:
            return super().forward(x.float()).to(torch.bfloat16)
        return super().forward(x)


class Float32BatchNorm1d(_Float32Input, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` under :func:`batchnorm_float32`."""


class Float32BatchNorm2d(_Float32Input, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` under :func:`batchnorm_float32`."""


class Float32BatchNorm3d(_Float32Input, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` under :func:`batchnorm_float32`."""


class Float32SyncBatchNorm(_Float32Input, nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` under :func:`batchnorm_float32`."""


_SWAP: dict[type, type] = {
    nn.BatchNorm1d: Float32BatchNorm1d,
    nn.BatchNorm2d: Float32BatchNorm2d,
    nn.BatchNorm3d: Float32BatchNorm3d,
    nn.SyncBatchNorm: Float32SyncBatchNorm,
}


def batchnorm_float32(module: nn.Module) -> int:
    """Switch every BatchNorm layer of `module` (in place) to the float32-input form; returns
    how many layers were switched. A BatchNorm subclass other than the four of torch.nn is
    an error (its own forward would be bypassed)."""
    switched = 0
    for name, m in module.named_modules():
        if isinstance(m, _Float32Input) or not isinstance(m, _BatchNorm):
            continue
        target = _SWAP.get(type(m))
        if target is None:
            raise TypeError(
                f"batchnorm_float32: {name or 'module'} is a {type(m).__name__}, not one of "
                f"{[c.__name__ for c in _SWAP]}; convert it to one of these first"
            )
        m.__class__ = target
        switched += 1
    return switched


__all__ = ["batchnorm_float32"]
