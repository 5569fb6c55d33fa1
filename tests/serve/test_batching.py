"""MicroBatcher alone: concurrent submissions share forward passes up to max_batch, each gets its own
row back, a failing model fails every waiter of its batch (and the next batch still runs), stop() fails
what is still waiting."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from flawmap.serve.batching import MicroBatcher, ShuttingDown


def _raw(calls: list[int]):
    def raw(x: np.ndarray):
        assert threading.current_thread().name.startswith("flawmap-infer")  # never on the event loop
        calls.append(len(x))
        return x.reshape(len(x), -1).sum(axis=1).astype(np.float32), x[:, 0] * 2
    return raw


def test_batches_rows_and_limits() -> None:
    calls: list[int] = []

    async def go():
        b = MicroBatcher(_raw(calls), max_batch=4, max_wait_s=0.05)
        b.start()
        xs = [np.full((3, 2, 2), i, np.float32) for i in range(10)]
        res = await asyncio.gather(*(b.submit(x) for x in xs))
        await b.stop()
        return xs, res

    xs, res = asyncio.run(go())
    assert calls == [4, 4, 2]
    for x, r in zip(xs, res):
        assert r.score == float(x.sum()) and np.array_equal(r.map, x[0] * 2) and r.batch_size in (4, 2)


def test_failure_reaches_every_waiter_and_stop_fails_pending() -> None:
    state = {"fail": True}

    def raw(x):
        if state.pop("fail", False):
            raise RuntimeError("model broke")
        return np.zeros(len(x), np.float32), x[:, 0]

    async def go():
        b = MicroBatcher(raw, max_batch=8, max_wait_s=0.05)
        b.start()
        first = await asyncio.gather(*(b.submit(np.zeros((3, 2, 2), np.float32)) for _ in range(3)),
                                     return_exceptions=True)
        ok = await b.submit(np.zeros((3, 2, 2), np.float32))
        b.max_wait_s = 10.0  # the next image waits for company...
        pending = asyncio.ensure_future(b.submit(np.zeros((3, 2, 2), np.float32)))
        await asyncio.sleep(0.05)
        await b.stop()  # ...and is failed by the shutdown
        with pytest.raises(ShuttingDown):
            await pending
        with pytest.raises(ShuttingDown):
            await b.submit(np.zeros((3, 2, 2), np.float32))
        return first, ok

    first, ok = asyncio.run(go())
    assert all(isinstance(e, RuntimeError) and "model broke" in str(e) for e in first)
    assert ok.batch_size == 1
