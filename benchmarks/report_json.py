"""What every benchmark script ends with: its report as one JSON object on stdout, and in --out."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(report: dict[str, Any], out: Path | None) -> None:
    """Print `report` (indented JSON) and, with `out`, write it there too (folders created)."""
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
