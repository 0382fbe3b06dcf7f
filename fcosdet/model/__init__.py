from .backbone import ResNetBackbone
from .fcos import FCOS
from .fpn import FCOSFPN
from .head import FCOSHead, FCOSOutputs

__all__ = ["FCOS", "FCOSFPN", "FCOSHead", "FCOSOutputs", "ResNetBackbone"]
