"""What several sub-commands share: the --set option and the rule that only test.* keys change
an already trained model."""
from __future__ import annotations

from typing import Any

from fcosdet.config import parse_sets
from fcosdet.errors import UserError


def add_set_option(parser: Any, help: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def test_overrides(sets: list[str], *, command: str) -> dict[str, Any]:
    """--set values for a trained model: test.* keys only (the rest comes from the model file)."""
    overrides = parse_sets(list(sets))
    for key in overrides:
        if not key.startswith("test."):
            raise UserError(f"{command} --set takes test.* keys (test.nms_iou, test.score_thr, test.max_per_img, "
                            f"...), got {key!r}: the model's other settings come from the model file")
    return overrides
