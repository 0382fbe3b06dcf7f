"""A faster inference copy of a trained FCOS: BatchNorm folded into the convolutions before it,
weights and activations in channels_last. Outputs equal the plain model's within float
rounding (tests/test_predictor.py checks it); training never uses this.

Folding (eval-mode BatchNorm, frozen or not): y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta
is one convolution with weight w * s and bias (b - mean) * s + beta, s = gamma / sqrt(var + eps).
GroupNorm (the head, and GN backbones) depends on the input's statistics and stays as it is.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from fcosdet.model import FCOS

_BATCH_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _fold_pair(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """conv followed by eval-mode BN -> one conv with a bias."""
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                        bn.eps, bn.weight, bn.bias)
    fused.weight, fused.bias = weight, bias
    return fused


def fold_batchnorm(module: nn.Module) -> int:
    """In place: every (convN, bnN) attribute pair (torchvision ResNet stems and blocks) and every
    Conv2d -> BN run inside an nn.Sequential (downsample branches) becomes conv, Identity.
    Returns the number of folded pairs."""
    folded = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        for name, child in children.items():
            if not isinstance(child, nn.Conv2d) or not name.startswith("conv"):
                continue
            bn = children.get("bn" + name[len("conv"):])
            if isinstance(bn, _BATCH_NORMS):
                setattr(parent, name, _fold_pair(child, bn))
                setattr(parent, "bn" + name[len("conv"):], nn.Identity())
                folded += 1
        if isinstance(parent, nn.Sequential):
            items = list(parent)
            for i in range(len(items) - 1):
                if isinstance(items[i], nn.Conv2d) and isinstance(items[i + 1], _BATCH_NORMS):
                    parent[i], parent[i + 1] = _fold_pair(items[i], items[i + 1]), nn.Identity()
                    folded += 1
    return folded


def fast_inference_model(model: FCOS, *, channels_last: bool = True) -> FCOS:
    """An eval-mode copy of `model` with BatchNorm folded (and in channels_last): for inference
    only; the original is left untouched."""
    fast = copy.deepcopy(model).eval()
    with torch.no_grad():
        fold_batchnorm(fast.backbone)
    for p in fast.parameters():
        p.requires_grad_(False)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast
