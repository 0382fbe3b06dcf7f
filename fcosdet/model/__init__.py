from .backbone import ResNetBackbone
from .fcos import FCOS
from .fpn import FCOSFPN
from .head import FCOSHead

__all__ = ["FCOS", "FCOSFPN", "FCOSHead", "ResNetBackbone"]
