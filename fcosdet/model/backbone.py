"""torchvision ResNet as the FCOS backbone: C3, C4, C5 (and C2 with `c2=True`, for the P2
level) with frozen stages and norm_eval.

Dimensions: B images; C2/C3/C4/C5 have strides 4/8/16/32.
norm: "frozen_bn" (the reference's BN with requires_grad=False and norm_eval: use it with
pretrained weights), "bn" (trainable BatchNorm; `norm_eval` keeps running statistics fixed),
or "gn" (GroupNorm(32), for training from scratch or tiny batches).
style: "pytorch" (torchvision: a stage's stride on the 3x3 conv2 of its first Bottleneck) or
"caffe" (mmdetection's / Detectron's caffe-style ResNets: the stride on the 1x1 conv1 instead).
The two have the same weight shapes and output sizes but compute different features: weights
must run with the style they were trained with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import Tensor, nn
from torchvision.models import ResNet, resnet18, resnet34, resnet50, resnet101
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from fcosdet.errors import UserError
from fcosdet.io.hub import is_torchvision_name, load_torchvision_state_dict, torchvision_weights
from fcosdet.io.model_file import error_line, read_tensor_file, strip_module_prefix


def resnet10(*, weights: None = None, norm_layer: Callable[[int], nn.Module]) -> ResNet:
    """torchvision's ResNet with one BasicBlock per stage: a light from-scratch CPU backbone
    (about half of ResNet-18's compute; no published weights exist for it)."""
    return ResNet(BasicBlock, [1, 1, 1, 1], norm_layer=norm_layer)


_RESNETS = {10: resnet10, 18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101}
_NORMS = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d,
          "gn": lambda c: nn.GroupNorm(32, c)}


class ResNetBackbone(nn.Module):
    def __init__(self, *, depth: int = 50, norm: str = "frozen_bn", frozen_stages: int = 1,
                 norm_eval: bool = True, weights: str | Path | None = None,
                 style: str = "pytorch", c2: bool = False) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise UserError(f"backbone depth {depth} is not supported; use one of {sorted(_RESNETS)}")
        if norm not in _NORMS:
            raise UserError(f"backbone norm {norm!r} is not supported; use one of {sorted(_NORMS)}")
        if not -1 <= frozen_stages <= 4:
            raise UserError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        if style not in ("pytorch", "caffe"):
            raise UserError(f"backbone style {style!r} is not supported; use 'pytorch' or 'caffe'")
        body = _RESNETS[depth](weights=None, norm_layer=_NORMS[norm])
        del body.fc, body.avgpool
        if style == "caffe":
            _caffe_strides(body, depth)
        self.body = body
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        last = body.layer4[-1]
        c5 = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
        self.c2 = c2
        self.out_channels = ((c5 // 8,) if c2 else ()) + (c5 // 4, c5 // 2, c5)  # (C2,) C3, C4, C5
        if weights is not None:
            load_torchvision_weights(self.body, weights)
        self._freeze()

    def _stage(self, i: int) -> list[nn.Module]:
        b = self.body
        return [b.conv1, b.bn1] if i == 0 else [getattr(b, f"layer{i}")]

    def _freeze(self) -> None:
        """frozen_stages = k freezes the stem (k >= 0) and layer1..layerk, as the reference."""
        for i in range(self.frozen_stages + 1):
            for module in self._stage(i):
                module.eval()
                for p in module.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNetBackbone":
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))  # (B, 64, H/4, W/4)
        c2 = b.layer1(x)  # (B, C2, H/4, W/4)
        c3 = b.layer2(c2)  # (B, C3, H/8, W/8)
        c4 = b.layer3(c3)  # (B, C4, H/16, W/16)
        c5 = b.layer4(c4)  # (B, C5, H/32, W/32)
        return [c2, c3, c4, c5] if self.c2 else [c3, c4, c5]


def _caffe_strides(body: ResNet, depth: int) -> None:
    """Move the stride of layer2..layer4's first Bottleneck from its 3x3 conv2 to its 1x1 conv1
    (caffe style). The 1x1 conv has no padding, so every output size stays the same."""
    if not isinstance(body.layer1[0], Bottleneck):
        raise UserError(f"model.backbone_style=caffe needs a Bottleneck ResNet (depth 50 or 101), not "
                        f"depth {depth}; use --set model.backbone_style=pytorch for depth {depth}")
    for layer in (body.layer2, body.layer3, body.layer4):
        first = layer[0]
        first.conv1.stride, first.conv2.stride = first.conv2.stride, first.conv1.stride  # (2, 2), (1, 1)


def load_torchvision_weights(body: nn.Module, path: str | Path) -> None:
    """Load a torchvision-format ResNet state_dict (`conv1.weight`, `layer1.0...`; `fc.*` ignored)
    from a file, or torchvision's published weights by enum name
    (`torchvision:ResNet50_Weights.IMAGENET1K_V2`, downloaded into torch.hub's cache)."""
    if is_torchvision_name(path):
        state = load_torchvision_state_dict(torchvision_weights(str(path)))
        _load_resnet_state(body, state, str(path))
        return
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone weights {path} do not exist; give the path of a torchvision "
                        f"ResNet state_dict (.pth) or leave model.backbone_weights empty")
    state = read_tensor_file(path, unreadable=lambda exc: (f"cannot read backbone weights {path}: {error_line(exc)}; "
                                                            f"save them with torch.save(model.state_dict(), path)"))
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    _load_resnet_state(body, state, str(path))


def _load_resnet_state(body: nn.Module, state: dict[str, Tensor], path: str) -> None:
    """Copy a torchvision ResNet state_dict into `body`; any missing / extra / misshapen key is an error."""
    state = {k: v for k, v in strip_module_prefix(state).items() if not k.startswith("fc.")}
    own = body.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own and not k.endswith("num_batches_tracked"))
    wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        raise UserError(
            f"backbone weights {path} do not fit this ResNet (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {wrong[:3]}); check model.depth and model.backbone_norm "
            f"(BatchNorm weights need 'frozen_bn' or 'bn')")
    body.load_state_dict(state, strict=False)
