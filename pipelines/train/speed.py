"""Step-speed switches of the training loop: ``train.compile`` and ``train.channels_last``.

* :func:`compile_modules` — ``torch.compile`` of the network and the loss in place
  (``nn.Module.compile``: parameter names, ``state_dict`` keys and checkpoints stay those of
  the eager module). The network is compiled *before* DDP wraps it, as PyTorch recommends for
  DistributedDataParallel; DDP's reducer hooks stay in eager code, so ``no_sync`` and gradient
  accumulation behave as without compile. Modes: ``default`` and ``max-autotune``; backend
  ``inductor`` (generated C++/Triton kernels, needs a C++ compiler on CPU) or ``aot_eager``
  (the same captured, functionalised forward/backward graphs run by eager kernels: for
  debugging and for CPU tests, where inductor's C++ builds take minutes on a small machine).
  :func:`eager` runs a compiled module eagerly (validation: other batch shapes and eval mode
  would each cost a recompilation).
* :func:`to_channels_last` — every 4-D parameter/buffer (Conv2d weights) to
  ``torch.channels_last`` and every 5-D one (Conv3d weights) to ``torch.channels_last_3d``.
  A memory format only changes strides, never values: ``y = f(x)`` is the same function.
* :func:`model_input` — the clip batch to the device and to the model's input range:
  ``x = clip / 255`` for ``uint8`` clips (``pipelines.data.collate(uint8=True)``), done on the
  device after the 4x smaller uint8 transfer; float clips pass through. The per-channel
  ``(x - mean) / std`` stays inside the encoders (their ``normalize``), on the same device.
  With ``channels_last`` the clip is laid out ``channels_last_3d`` (the target frame the 2-D
  encoder reads, ``clip[:, :, t]``, is then a channels-last 4-D view).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

COMPILE_MODES = ("none", "default", "max-autotune")
COMPILE_BACKENDS = ("inductor", "aot_eager")


def compile_modules(*modules: nn.Module, mode: str, backend: str = "inductor") -> None:
    """Compile ``modules`` in place (``mode`` none: nothing happens)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"train.compile must be one of {COMPILE_MODES}, got {mode!r}")
    if backend not in COMPILE_BACKENDS:
        raise ValueError(
            f"train.compile_backend must be one of {COMPILE_BACKENDS}, got {backend!r}"
        )
    if mode == "none":
        return
    # modes are an inductor notion; other backends take none
    kwargs = {"mode": mode} if backend == "inductor" else {}
    for m in modules:
        m.compile(backend=backend, **kwargs)


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules with their eager code inside the block (no compilation)."""
    import torch

    with torch.compiler.set_stance("force_eager"):
        yield


def to_channels_last(module: nn.Module) -> nn.Module:
    """4-D tensors of ``module`` to channels-last, 5-D to channels-last-3d (in place).

    Call it before the optimizer is built (its state follows the parameters' layout)."""
    import torch

    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            fmt = formats.get(t.dim())
            if fmt is not None and not t.is_contiguous(memory_format=fmt):
                t.data = t.data.contiguous(memory_format=fmt)
    return module


def model_input(clip: torch.Tensor, device: torch.device, *, channels_last: bool) -> torch.Tensor:
    """A collated clip ``[B, 3, T, H, W]`` (uint8 0..255 or float 0..1) as float32 in [0, 1] on
    ``device``, laid out channels-last-3d or contiguous."""
    import torch

    x = clip.to(device, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


__all__ = [
    "COMPILE_BACKENDS",
    "COMPILE_MODES",
    "compile_modules",
    "eager",
    "model_input",
    "to_channels_last",
]
