"""Progress bars for long work (tqdm on stderr). Off when stderr is not a terminal unless forced."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_FORCE: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """True: always show bars, False: never, None: only when stderr is a terminal."""
    global _FORCE
    _FORCE = enabled


def _enabled() -> bool:
    if os.environ.get("FLAWMAP_NO_PROGRESS"):
        return False
    if _FORCE is not None:
        return _FORCE
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=not _enabled(), leave=False, dynamic_ncols=True))


def bar(desc: str, total: int, unit: str = "it") -> tqdm:
    """A manual bar (call .update(n), .close())."""
    return tqdm(desc=desc, total=total, unit=unit, disable=not _enabled(), leave=False, dynamic_ncols=True)
