"""Inference-only rewrites of a trained C-Tran that change its results by float rounding only.

``fuse_for_inference(model, dtype)`` (called by ``optimize_for_inference``, hence by ``ctran.load``) does
four things, each exact in arithmetic and measured in ``BENCHMARKS.md``:

- **BatchNorm folded into the convolution before it.** In eval mode BatchNorm is an affine map with
  constant coefficients, so ``bn(conv(x))`` is one convolution with weight ``w * g / sqrt(v + eps)`` and
  bias ``b - m * g / sqrt(v + eps)``; one pass over every feature map (104 of them in ResNet-101) goes.
- **ReLU and residual add inside the convolution** (CPU, channels-last maps): oneDNN applies them to each
  output tile before writing it (``torch.ops.mkldnn._convolution_pointwise``, the kernels Inductor emits
  for this pattern), so no separate pass reads and writes the map again. In NCHW, oneDNN would reorder
  every map to its blocked layout and back, which costs more than it saves: there the plain convolution
  runs, followed by in-place ReLU, except that a bottleneck's last (1x1) convolution is a matrix product
  accumulated into the shortcut in place. On GPUs only the folding applies.
- **Weights stored in the compute dtype.** Under bf16/fp16 autocast every call casts each float32
  convolution and linear weight again (about 120 M values for the paper's model); stored once in that
  dtype they are the very values autocast would make, so those layers give bit-identical outputs.
- **Label tokens' first-layer projections tabulated** (``CTran.freeze_label_projections``): each label
  token takes one of three values (its state), so its first-layer Q/K/V are looked up, not recomputed.

What is fused: timm ResNets built from ``Bottleneck``/``BasicBlock`` with the plain stem (the paper's
``resnet101``), and plain ``Conv2d``/``BatchNorm2d``/``ReLU``/``MaxPool2d`` stacks (``small_cnn``). Other
backbones keep their modules; the transformer's linear layers are stored in the compute dtype either way.
The result serves eval-mode inference in that one dtype; it refuses to run in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctran.model import CTran
from ctran.model.backbone import SmallCNN, TimmBackbone


def _onednn_ready() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _channels_last(t: torch.Tensor) -> bool:
    """Strictly NHWC: channels-last contiguous and not also NCHW contiguous (1x1 maps are both)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight (C_out, C_in/g, k, k) and bias (C_out,) of ``bn(conv(x))`` as one convolution (eval)."""
    weight = conv.weight.detach()
    bias = None if conv.bias is None else conv.bias.detach()
    if bn is None:
        return weight, bias
    scale = bn.weight.detach() * torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
    shift = bn.bias.detach() - bn.running_mean * scale
    folded_bias = shift if bias is None else bias * scale + shift
    return weight * scale.reshape(-1, 1, 1, 1), folded_bias


class FusedConv2d(nn.Module):
    """``relu?(conv(x) + bias [+ residual])`` with BatchNorm folded in; weights are buffers (no training)."""

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d | None,
        relu: bool,
        dtype: torch.dtype,
        post_ops: bool = True,
    ) -> None:
        super().__init__()
        weight, bias = fold_batchnorm(conv, bn)
        memory_format = torch.channels_last if _channels_last(conv.weight) else torch.contiguous_format
        self.register_buffer("weight", weight.to(dtype).contiguous(memory_format=memory_format))
        self.register_buffer("bias", None if bias is None else bias.to(dtype))
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.groups, self.relu, self.post_ops = conv.groups, relu, post_ops
        self.onednn = post_ops and _onednn_ready()  # decided here: in forward, a torch.compile graph break
        self.pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
        self.pointwise &= conv.groups == 1 and conv.dilation == (1, 1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C_in, H, W) [, residual (B, C_out, H', W')] -> (B, C_out, H', W'), x's layout."""
        weight, bias = self.weight, self.bias
        if weight.dtype != x.dtype:  # run in another precision than stored: cast, as autocast would
            weight, bias = weight.to(x.dtype), None if bias is None else bias.to(x.dtype)
        cpu = x.device.type == "cpu"
        if self.onednn and cpu and (_channels_last(x) or _channels_last(weight)):
            args = (weight, bias, self.padding, self.stride, self.dilation, self.groups)
            unary = "relu" if self.relu else "none"
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(x, *args, unary, [], "")
            binary = torch.ops.mkldnn._convolution_pointwise.binary
            return binary(x, residual, *args, "add", None, unary if self.relu else None, [], "")
        if residual is not None and self.post_ops and cpu and self._accumulates(x, residual):
            return self._accumulate(x, residual, weight, bias)
        y = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y += residual
        return y.relu_() if self.relu else y

    def _accumulates(self, x: torch.Tensor, residual: torch.Tensor) -> bool:
        """Whether ``_accumulate`` applies: a 1x1 convolution of NCHW maps, outside autograd."""
        contiguous = x.is_contiguous() and residual.is_contiguous() and residual.dtype == x.dtype
        return self.pointwise and contiguous and not (torch.is_grad_enabled() and residual.requires_grad)

    def _accumulate(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """A 1x1 convolution on NCHW maps as a matrix product accumulated into ``residual`` in place.

        The residual is the GEMM's C operand (beta = 1), so there is no separate add pass, and no copy of
        the bias into the output first (PyTorch's NCHW 1x1 path makes one): together 10-40 % of these
        convolutions' time. ``residual`` (the block's shortcut, read by nobody else) is overwritten.
        """
        batch, channels = x.shape[:2]
        out = residual.view(batch, residual.shape[1], -1)  # (B, C_out, H*W)
        matrix = weight.view(weight.shape[0], channels)  # (C_out, C_in)
        for sample, image in zip(out, x.view(batch, channels, -1), strict=True):
            sample.addmm_(matrix, image)  # (C_out, H*W) += (C_out, C_in) @ (C_in, H*W)
        if bias is not None:
            residual.add_(bias.view(-1, 1, 1))
        return residual.relu_() if self.relu else residual


def max_pool(x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """``pool(x)``; ResNet's 3x3/2 pool on an NCHW map as a max over strided views (same values).

    PyTorch's CPU max-pool vectorises over channels, so on NCHW maps it is several times slower than on
    channels-last ones (and it computes indices nobody reads); six element-wise maxima are not.
    """
    plain = (pool.kernel_size, pool.stride, pool.padding, pool.dilation) in {
        (3, 2, 1, 1),
        ((3, 3), (2, 2), (1, 1), (1, 1)),
    }
    if _channels_last(x) or not plain or pool.ceil_mode or x.device.type != "cpu":
        return pool(x)
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))  # (B, C, H + 2, W + 2)
    h, w = (x.shape[-2] - 1) // 2 + 1, (x.shape[-1] - 1) // 2 + 1
    rows = [padded[..., i : i + 2 * h : 2, :] for i in range(3)]  # each (B, C, h, W + 2)
    rows_max = torch.maximum(torch.maximum(rows[0], rows[1]), rows[2])
    cols = [rows_max[..., j : j + 2 * w : 2] for j in range(3)]  # each (B, C, h, w)
    return torch.maximum(torch.maximum(cols[0], cols[1]), cols[2])


class FusedBlock(nn.Module):
    """A ResNet ``Bottleneck``/``BasicBlock``; the last convolution also adds the shortcut, then ReLU."""

    def __init__(self, convs: list[FusedConv2d], downsample: FusedConv2d | None) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        for conv in self.convs[:-1]:
            x = conv(x)
        return self.convs[-1](x, residual=shortcut)


class FusedResNet(nn.Module):
    """A timm ResNet's ``forward_features``: stem, max-pool, residual stages -> (B, C, h, w)."""

    def __init__(self, stem: FusedConv2d, pool: nn.MaxPool2d, blocks: list[FusedBlock]) -> None:
        super().__init__()
        self.stem, self.pool = stem, pool
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(max_pool(self.stem(x), self.pool))


class FusedStack(nn.Module):
    """A plain stack of fused convolutions and max-pools (``SmallCNN``)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = max_pool(x, layer) if isinstance(layer, nn.MaxPool2d) else layer(x)
        return x


class FusedBackbone(nn.Module):
    """Drop-in for a backbone: images (B, 3, H, W) -> feature map (B, C, h, w).

    It runs in the autocast dtype when autocast is on, else in the dtype its weights are stored in, as the
    unfused modules would (their oneDNN kernels are not autocast-aware, so the cast is made here).
    """

    def __init__(self, body: nn.Module, num_channels: int) -> None:
        super().__init__()
        self.body, self.num_channels = body, num_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(
                "a fused backbone is for inference only (its BatchNorm is folded); call .eval()"
            )
        device = images.device.type
        stored = next(self.body.buffers()).dtype  # follows .to(dtype)/.double() like any module
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else stored
        return self.body(images.to(dtype))  # the cast autocast makes before the first convolution


def _is_identity(module: nn.Module | None) -> bool:
    """Modules that are the identity in eval mode (timm's drop-path and drop-block included)."""
    from timm.layers import DropBlock2d, DropPath

    return module is None or isinstance(module, nn.Identity | DropPath | DropBlock2d)


def _plain_conv(conv: object) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _fuse_block(block: nn.Module, dtype: torch.dtype, post_ops: bool) -> FusedBlock | None:
    """A timm ``Bottleneck`` (3 convs) or ``BasicBlock`` (2 convs) with ReLU and no SE/anti-aliasing."""
    count = 3 if hasattr(block, "conv3") else 2
    parts = [(getattr(block, f"conv{i}", None), getattr(block, f"bn{i}", None)) for i in range(1, count + 1)]
    acts = [getattr(block, f"act{i}", None) for i in range(1, count + 1)]
    plain = all(_plain_conv(c) and isinstance(b, nn.BatchNorm2d) for c, b in parts)
    plain &= all(isinstance(a, nn.ReLU) for a in acts)
    plain &= all(_is_identity(getattr(block, name, None)) for name in ("drop_block", "aa", "se", "drop_path"))
    downsample = getattr(block, "downsample", None)
    fused_down = None
    if downsample is not None:
        if not (
            isinstance(downsample, nn.Sequential) and len(downsample) == 2 and _plain_conv(downsample[0])
        ):
            return None
        if not isinstance(downsample[1], nn.BatchNorm2d):
            return None
        fused_down = FusedConv2d(downsample[0], downsample[1], False, dtype, post_ops)
    if not plain:
        return None
    return FusedBlock([FusedConv2d(c, b, True, dtype, post_ops) for c, b in parts], fused_down)


def _fuse_timm_resnet(body: nn.Module, dtype: torch.dtype, post_ops: bool) -> FusedResNet | None:
    from timm.models.resnet import ResNet

    if not isinstance(body, ResNet) or not _plain_conv(body.conv1) or not isinstance(body.act1, nn.ReLU):
        return None
    if not isinstance(body.bn1, nn.BatchNorm2d) or not isinstance(body.maxpool, nn.MaxPool2d):
        return None
    blocks = [
        _fuse_block(block, dtype, post_ops)
        for stage in (body.layer1, body.layer2, body.layer3, body.layer4)
        for block in stage
    ]
    if any(block is None for block in blocks):
        return None
    stem = FusedConv2d(body.conv1, body.bn1, True, dtype, post_ops)
    return FusedResNet(stem, body.maxpool, blocks)


def _fuse_stack(body: nn.Module, dtype: torch.dtype, post_ops: bool) -> FusedStack | None:
    """Conv [BatchNorm] [ReLU] runs and max-pools of (nested) ``nn.Sequential`` s; None if anything else."""
    flat = [m for m in body.modules() if not isinstance(m, nn.Sequential)]
    layers: list[nn.Module] = []
    i = 0
    while i < len(flat):
        module = flat[i]
        if isinstance(module, nn.MaxPool2d):
            layers.append(module)
            i += 1
            continue
        if not _plain_conv(module):
            return None
        bn = flat[i + 1] if i + 1 < len(flat) and isinstance(flat[i + 1], nn.BatchNorm2d) else None
        i += 1 + (bn is not None)
        relu = i < len(flat) and isinstance(flat[i], nn.ReLU)
        i += relu
        layers.append(FusedConv2d(module, bn, relu, dtype, post_ops))
    return FusedStack(layers)


def fuse_backbone(
    backbone: nn.Module, dtype: torch.dtype = torch.float32, post_ops: bool = True
) -> nn.Module:
    """The fused equivalent of ``backbone`` (eval mode) with weights in ``dtype``; ``backbone`` itself if it
    cannot be fused. ``post_ops=False`` keeps ReLU and residual adds as separate passes (folding only)."""
    body = None
    if isinstance(backbone, TimmBackbone) and backbone.output_fmt == "NCHW":
        body = _fuse_timm_resnet(backbone.body, dtype, post_ops)
    elif isinstance(backbone, SmallCNN):
        body = _fuse_stack(backbone.body, dtype, post_ops)
    return backbone if body is None else FusedBackbone(body, backbone.num_channels).eval()


def store_weights(model: CTran, dtype: torch.dtype) -> CTran:
    """The input projection's and the transformer's linear weights stored in ``dtype`` (in place)."""
    model.input_proj.to(dtype)
    for module in model.encoder.modules():
        if isinstance(module, nn.Linear | nn.MultiheadAttention):
            module.to(dtype)
    return model


def fuse_for_inference(model: CTran, dtype: torch.dtype = torch.float32, post_ops: bool = True) -> CTran:
    """Fold/fuse the backbone, store the convolution and linear weights in ``dtype`` and tabulate the label
    tokens' first-layer projections (``CTran.freeze_label_projections``), in place.

    ``post_ops=False`` leaves ReLU and residual adds to be fused by someone else: torch.compile cannot
    trace oneDNN's fused ops, and Inductor emits the same fusion itself.
    """
    model.backbone = fuse_backbone(model.backbone, dtype, post_ops)
    store_weights(model, dtype)
    model.freeze_label_projections(dtype)
    return model.eval()
