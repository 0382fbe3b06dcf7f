"""Published weights by name, through torchvision's weight enums and torch.hub's cache.

`torchvision:ResNet50_Weights.IMAGENET1K_V2` names an enum member of torchvision.models; its
file is downloaded once into torch.hub's cache (`torch.hub.get_dir()/checkpoints/`) and read
from there afterwards, with torch.load(weights_only=True). Offline, a missing file is one
UserError naming the path to put it at.
"""
from __future__ import annotations

import re
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.models import get_weight

from fcosdet.errors import UserError
from fcosdet.io.model_file import error_line, read_tensor_file

PREFIX = "torchvision:"


def is_torchvision_name(value: str | Path | None) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def torchvision_weights(name: str) -> Any:
    """'ResNet50_Weights.IMAGENET1K_V2' (with or without the 'torchvision:' prefix) -> the enum member."""
    bare = name.removeprefix(PREFIX)
    try:
        return get_weight(bare)
    except (KeyError, ValueError, AttributeError):
        raise UserError(f"{name!r} is not one of torchvision's weights; use an enum name such as "
                        f"torchvision:ResNet50_Weights.IMAGENET1K_V2 (see torchvision.models."
                        f"list_models / get_model_weights)") from None


def cache_path(weights: Any) -> Path:
    """Where torch.hub keeps (and looks for) the file of a torchvision weights enum member."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_torchvision_state_dict(weights: Any) -> dict[str, Tensor]:
    """The state_dict of a torchvision weights enum member: from torch.hub's cache, downloaded
    there first (hash-checked) when it is missing. No connection: one UserError saying where to
    put the file."""
    target = cache_path(weights)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = re.search(r"-([a-f0-9]+)\.", target.name)  # torchvision's files end in -<sha256 prefix>.pth
        try:
            torch.hub.download_url_to_file(weights.url, str(target), digest.group(1) if digest else None)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise UserError(f"cannot download {weights} from {weights.url} ({exc}); on a machine without "
                            f"internet, download that file elsewhere and put it at {target} "
                            f"(torch.hub.get_dir(), set by $TORCH_HOME)") from None
        except RuntimeError as exc:  # the hash check failed: a corrupt download (already removed)
            raise UserError(f"the download of {weights.url} is corrupt ({exc}); try again") from None
    # a truncated or corrupt file in the cache
    return read_tensor_file(target, unreadable=lambda exc: (f"cannot read {target} for {weights} ({error_line(exc)}); "
                                                             f"delete it and download it again from {weights.url}"))
