"""Micro-batching: concurrent requests share one forward pass.

Requests ``submit`` one preprocessed image (3, H, W) each; a collector task takes the waiting images
(up to ``max_batch``; the first waits at most ``max_wait_s`` for company), stacks them into (B, 3, H, W)
and runs ``raw`` on them in one worker thread, so the event loop never blocks and the model never runs
twice at once. While a batch runs, new requests queue up and form the next one: under load the batches
grow by themselves, so throughput grows with load. Every image is scored independently by the detectors,
so its score does not depend on the batch it was in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

RawFn = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


@dataclass(frozen=True)
class BatchResult:
    """One image's share of a forward pass: raw score, map (H, W), the batch size and its time."""

    score: float
    map: np.ndarray
    batch_size: int
    infer_ms: float


@dataclass
class _Item:
    x: np.ndarray  # (3, H, W) float32
    future: asyncio.Future = field(repr=False)


class ShuttingDown(RuntimeError):
    """The batcher was stopped before this image ran."""


class MicroBatcher:
    """Group images into batches for ``raw`` ((B, 3, H, W) -> scores (B,), maps (B, H, W))."""

    def __init__(self, raw: RawFn, max_batch: int = 8, max_wait_s: float = 0.002) -> None:
        self.raw = raw
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.batches = 0  # forward passes run (observability: /v1/model reports them)
        self.images = 0
        self._pending: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        """Images waiting for a forward pass (the queue depth)."""
        return len(self._pending)

    def start(self) -> None:
        """Start the collector on the running event loop."""
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flawmap-infer")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="flawmap-batcher")

    async def stop(self) -> None:
        """Stop the collector; images still waiting fail with ShuttingDown."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(ShuttingDown("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Score one preprocessed image (3, H, W) float32 in the next batch."""
        if self._task is None or self._task.done():
            raise ShuttingDown("the batcher is not running")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(np.asarray(x, dtype=np.float32), fut))
        self._wake.set()
        return await fut

    async def _gather(self) -> list[_Item]:
        """Wait for a first image, then up to ``max_wait_s`` for more (at most ``max_batch``)."""
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        deadline = time.monotonic() + self.max_wait_s
        while len(self._pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
            self._wake.clear()
            try:  # a wake-up lost to the timeout is harmless: the images are in _pending
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                break
        n = min(self.max_batch, len(self._pending))
        batch = [self._pending.popleft() for _ in range(n)]
        return [it for it in batch if not it.future.done()]  # a client that went away was cancelled

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            x = np.stack([it.x for it in batch])  # (B, 3, H, W): preprocess gives every image the model size
            t0 = time.perf_counter()
            try:
                scores, maps = await loop.run_in_executor(self._executor, self.raw, x)
            except asyncio.CancelledError:  # stopped mid-batch: its requests must not wait forever
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(ShuttingDown("the server is shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - the model failed: every waiting request gets the error
                log.exception("inference failed on a batch of %d images", len(batch))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            ms = (time.perf_counter() - t0) * 1e3
            self.batches += 1
            self.images += len(batch)
            for i, it in enumerate(batch):
                if not it.future.done():
                    it.future.set_result(BatchResult(float(scores[i]), maps[i], len(batch), ms))
