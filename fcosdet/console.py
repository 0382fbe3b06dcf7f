"""What the package prints: progress lines, messages and loud warnings, from rank 0 only.

`progress` shows a tqdm bar in a terminal and a plain line every ~5 % otherwise (a log file or
a pipe gets a few lines instead of minutes of silence).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

from tqdm import tqdm

from fcosdet.distributed import is_main_process

T = TypeVar("T")


def say(*args: Any) -> None:
    if is_main_process():
        print(*args, flush=True)


def warn(message: str) -> None:
    """A loud warning on stderr (rank 0): something works but is probably not what was meant."""
    if is_main_process():
        print(f"fcosdet: warning: {message}", file=sys.stderr, flush=True)


def progress(items: Iterable[T], *, total: int, desc: str, enabled: bool = True,
             percent_step: float = 5.0) -> Iterator[T]:
    """Yield `items` while reporting progress on stderr; `total` counts the items."""
    if not enabled or total <= 0:
        yield from items
        return
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True)
        return
    start, next_percent = time.perf_counter(), percent_step
    for done, item in enumerate(items, start=1):
        yield item
        percent = 100.0 * done / total
        if percent >= next_percent or done == total:
            elapsed = time.perf_counter() - start
            print(f"{desc}: {done}/{total} ({percent:.0f} %) {elapsed:.0f} s", file=sys.stderr, flush=True)
            while next_percent <= percent:
                next_percent += percent_step
