from fcosdet.model.backbone import ResNetBackbone
from fcosdet.model.fcos import FCOS
from fcosdet.model.fpn import FCOSFPN
from fcosdet.model.head import FCOSHead, FCOSOutputs

__all__ = ["FCOS", "FCOSFPN", "FCOSHead", "FCOSOutputs", "ResNetBackbone"]
