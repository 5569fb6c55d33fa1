"""Device selection: 'auto' picks CUDA when present, else CPU."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .errors import ConfigError


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}")
    return dev


@contextmanager
def one_cpu_thread(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with one torch thread when ``device`` is the CPU (restored afterwards).

    For many small kernels in a row (batched small Cholesky factorisations, per-cluster matmuls):
    multi-threading each of them costs more synchronisation than it gains (measured 10x slower with
    2 threads for 192 x 192 Cholesky)."""
    if torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def available_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Memory this process may still use on ``device``: the free CUDA memory, or on the CPU MemAvailable
    (Linux), else the physical memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_memory_budget(what: str, need_bytes: int, max_memory_gb: float | None, advice: str,
                        device: torch.device | str = "cpu") -> None:
    """Raise ConfigError before the work starts when ``need_bytes`` exceeds the budget: ``max_memory_gb``,
    or 90% of the available memory of ``device`` when None. ``what`` says what needs it, ``advice`` what to change."""
    budget = max_memory_gb * 2**30 if max_memory_gb is not None else 0.9 * available_memory_bytes(device)
    if need_bytes > budget:
        where = "" if torch.device(device).type == "cpu" else f" on {device}"
        raise ConfigError(f"{what} need ~{need_bytes / 2**30:.1f} GB, above the budget of {budget / 2**30:.1f} GB{where} "
                          f"(max_memory_gb, default 90% of the available memory). {advice}")

