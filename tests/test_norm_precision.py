"""``batchnorm_float32`` (pipelines/train/norm_precision.py): BatchNorm stays on cuDNN under bf16.

* Which kernel: PyTorch's own choice between ``cudnn_batch_norm`` and ``native_batch_norm`` for
  CUDA tensors, observed on this CPU machine with fake CUDA tensors (FakeTensorMode runs the
  real ``_batch_norm_impl_index`` decision, with this torch's cuDNN version, without a GPU).
  Plain BatchNorm on bfloat16 input with float32 parameters (what bf16 autocast produces)
  takes ``native_batch_norm``; the switched layer takes ``cudnn_batch_norm`` and hands back
  bfloat16. No speed is measured here (no GPU).
* Same values (CPU, real tensors, conv under CPU bf16 autocast, training mode): the switched
  layer's output equals float32 BatchNorm of the same (exactly up-cast) input rounded once to
  bfloat16 - within 2^-8 relative (bfloat16 keeps 8 significant bits: rounding <= 2^-9 of the
  value, doubled for the fp32 kernels' own order of summation); its running statistics equal
  float32 BatchNorm's to 1e-6. Against the all-float32 network (float32 conv too) the outputs
  agree to 3e-2 of their scale, as the default bf16 path does: the bf16 convolution dominates.
"""

from __future__ import annotations

import copy
import functools
import itertools
import pickle

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from pipelines.train.norm_precision import batchnorm_float32


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _cuda_kernel(
    dims: int, dtype: torch.dtype, *, switched: bool, train: bool
) -> tuple[str, torch.dtype]:
    """The batch-norm kernel torch picks for a CUDA input of `dtype` (fake tensors, no GPU)."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.device("cuda"):
            bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(8).train(train)
        assert bn.weight.dtype == bn.running_mean.dtype == torch.float32
        if switched:
            assert batchnorm_float32(bn) == 1
        x = torch.empty(2, 8, *([3] * dims), device="cuda", dtype=dtype)
        ops = _Ops()
        with ops:
            y = bn(x)
    kernels = [o for o in ops.ops if "batch_norm" in o]
    assert len(kernels) == 1, ops.ops
    return kernels[0], y.dtype


def test_bf16_batchnorm_runs_on_cudnn_after_the_switch():
    assert torch.backends.cudnn.is_available(), "this torch build has no cuDNN to choose"
    bf16, fp32 = torch.bfloat16, torch.float32
    for dims, train in itertools.product((2, 3), (True, False)):
        kernel = functools.partial(_cuda_kernel, dims, train=train)
        assert kernel(bf16, switched=False) == ("native_batch_norm", bf16), (dims, train)
        assert kernel(fp32, switched=False) == ("cudnn_batch_norm", fp32), (dims, train)
        assert kernel(bf16, switched=True) == ("cudnn_batch_norm", bf16), (dims, train)
        assert kernel(fp32, switched=True) == ("cudnn_batch_norm", fp32), (dims, train)


def test_switched_batchnorm_equals_float32_batchnorm():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 16, 3, padding=1)
    bn = nn.BatchNorm3d(16)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    x = torch.randn(2, 3, 4, 8, 8)
    ref_bn, fast_bn = copy.deepcopy(bn), copy.deepcopy(bn)
    batchnorm_float32(fast_bn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        assert h.dtype == torch.bfloat16  # what autocast hands BatchNorm
        y = fast_bn(h)
    assert y.dtype == torch.bfloat16
    want = ref_bn(h.float())  # float32 BatchNorm of the same input
    torch.testing.assert_close(y.float(), want, rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(fast_bn.running_mean, ref_bn.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_bn.running_var, ref_bn.running_var, rtol=0, atol=1e-6)
    assert fast_bn.running_mean.dtype == torch.float32
    # against the all-float32 path, as close as the default bf16 path (the bf16 conv dominates)
    full = copy.deepcopy(bn)(conv(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        default = copy.deepcopy(bn)(conv(x))
    scale = full.abs().max().item()
    for got in (y, default):
        assert (got.float() - full).abs().max().item() <= 3e-2 * scale
    # gradients reach the float32 parameters
    y.float().square().sum().backward()
    assert fast_bn.weight.grad.dtype == torch.float32 and fast_bn.weight.grad.abs().sum() > 0


def test_switch_keeps_the_layers_their_weights_and_float32_results():
    from lstc.cmam import ReleaseCMAM
    from lstc.decoder import ReleaseDecoder

    torch.manual_seed(0)
    net = nn.ModuleDict(
        {
            "cmam2d": ReleaseCMAM(channels=6, lang_dim=10, dims=2),  # BatchNorm 2d and 1d
            "cmam3d": ReleaseCMAM(channels=6, lang_dim=10, dims=3),  # BatchNorm 3d and 1d
            "decoder": ReleaseDecoder(  # 19 BatchNorm2d
                spatial_channels=[6] * 5,
                temporal_channels=[6] * 5,
                width=8,
                lasp=False,
                lang_dim=10,
                lasp_dim=8,
                lasp_prototypes=2,
            ),
        }
    ).train()
    before = net.state_dict()
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    switched = copy.deepcopy(net)
    assert batchnorm_float32(switched) == n_bn == 3 + 3 + 19
    assert batchnorm_float32(switched) == 0  # already switched
    assert all(isinstance(a, type(b)) for a, b in zip(switched.modules(), net.modules()))
    assert list(switched.state_dict()) == list(before)
    switched.load_state_dict(before)  # old checkpoints load
    pickle.loads(pickle.dumps(switched))  # the classes are importable
    words = torch.randn(2, 5, 10)
    for name, v in (("cmam2d", torch.randn(2, 6, 8, 8)), ("cmam3d", torch.randn(2, 6, 2, 8, 8))):
        for got, want in zip(switched[name](v, words), net[name](v, words)):
            assert torch.equal(got, want)  # float32: the layers run unchanged
    feats = [torch.randn(2, 6, 2**k, 2**k) for k in (5, 4, 3, 2, 1)]
    got = switched["decoder"](feats, feats, torch.randn(2, 10), (64, 64))[0]
    assert torch.equal(got, net["decoder"](feats, feats, torch.randn(2, 10), (64, 64))[0])
    assert all(torch.equal(a, b) for a, b in zip(switched.buffers(), net.buffers()))


def test_switch_refuses_unknown_batchnorm_subclasses():
    class MyNorm(nn.BatchNorm2d):
        pass

    with pytest.raises(TypeError, match="MyNorm, not one of"):
        batchnorm_float32(nn.Sequential(nn.Conv2d(1, 2, 1), MyNorm(2)))
