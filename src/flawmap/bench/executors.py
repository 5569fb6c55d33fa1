"""Where the runs of a sweep execute.

* ``LocalExecutor(workers=1)``: in this process, one run after the other (the default); results
  are yielded as each run finishes, so the driver stores them one by one.
* ``LocalExecutor(workers=N)``: a pool of N worker processes (spawned, torch threads split
  between them); one task per fit group.
* ``RayExecutor``: one Ray task per fit group, on a local Ray started here (``ray.init()``) or on
  an existing cluster (``address="ray://head:10001"`` or ``"auto"``). Workers need flawmap
  installed and the data root (and the feature cache folder, if shared) at the same path.

A fit group is the list of runs that share one fitted model (they differ only in the test-time
corruption, see ``runner.group_specs``). Every executor yields ``RunOutput`` objects; only the
driver writes the results store and the artifacts, so workers never write to the same file.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from ..errors import ConfigError
from .runner import RunOptions, RunOutput, RunSpec, SplitCache, execute_group, run_group

log = logging.getLogger(__name__)


@dataclass
class RunFailure:
    """A fit group that raised (only yielded with keep_going=True; otherwise the error propagates)."""

    keys: list[str]
    specs: list[RunSpec]
    message: str


def _failure(group: Sequence[RunSpec], exc: BaseException) -> RunFailure:
    return RunFailure([s.key() for s in group], list(group), f"{type(exc).__name__}: {exc}")


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 1, keep_going: bool = False) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be an integer >= 1; got {workers!r}")
        self.workers = workers
        self.keep_going = keep_going

    def run(self, groups: Sequence[Sequence[RunSpec]], options: RunOptions) -> Iterator[RunOutput | RunFailure]:
        if self.workers == 1 or len(groups) <= 1:
            if options.threads:
                torch.set_num_threads(options.threads)
            splits = SplitCache()
            for g in groups:
                finished = 0
                try:
                    for out, _, _ in run_group(g, splits, options):
                        finished += 1
                        yield out
                except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
                    if not self.keep_going:
                        raise
                    yield _failure(g[finished:], exc)
            return
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        opts = RunOptions(**{**options.__dict__, "threads": options.threads or threads})
        ctx = mp.get_context("spawn")  # no fork of a process that holds torch / OpenMP thread pools
        with ProcessPoolExecutor(max_workers=min(self.workers, len(groups)), mp_context=ctx,
                                 initializer=_quiet_worker) as pool:
            futures = {pool.submit(execute_group, list(g), opts): g for g in groups}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        try:
                            outs = fut.result()
                        except Exception as exc:  # noqa: BLE001
                            if not self.keep_going:
                                raise
                            yield _failure(futures[fut], exc)
                            continue
                        yield from outs
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise


class RayExecutor:
    """Ray tasks, one per fit group. ``address=None`` starts a local Ray (``num_cpus`` CPUs)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_run: float = 1.0,
                 keep_going: bool = False) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError('the Ray executor needs Ray: pip install "flawmap[ray]" (or "ray[default]")') from None
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_run = cpus_per_run
        self.keep_going = keep_going

    def run(self, groups: Sequence[Sequence[RunSpec]], options: RunOptions) -> Iterator[RunOutput | RunFailure]:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        started = False
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
            started = True
        threads = max(1, int(self.cpus_per_run))
        opts = RunOptions(**{**options.__dict__, "threads": options.threads or threads})
        task = ray.remote(num_cpus=self.cpus_per_run, max_retries=0)(_ray_execute_group)
        pending: list = []
        try:
            refs = {task.remote(list(g), opts): g for g in groups}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        outs = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001
                        if not self.keep_going:
                            raise
                        yield _failure(refs[ref], exc)
                        continue
                    yield from outs
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()


def _quiet_worker() -> None:
    """Worker processes draw no progress bars (they would interleave with the driver's output)."""
    os.environ["FLAWMAP_NO_PROGRESS"] = "1"


def _ray_execute_group(specs: list[RunSpec], options: RunOptions) -> list[RunOutput]:
    _quiet_worker()
    torch.set_num_threads(options.threads or 1)
    return execute_group(specs, options)


def make_executor(kind: str = "local", workers: int = 1, address: str | None = None,
                  num_cpus: int | None = None, cpus_per_run: float = 1.0,
                  keep_going: bool = False) -> LocalExecutor | RayExecutor:
    if kind == "local":
        if address:
            raise ConfigError("--address is only used with --executor ray")
        return LocalExecutor(workers, keep_going=keep_going)
    if kind == "ray":
        return RayExecutor(address=address, num_cpus=num_cpus or (workers if workers > 1 else None),
                           cpus_per_run=cpus_per_run, keep_going=keep_going)
    raise ConfigError(f"executor={kind!r} is not allowed; allowed values: local, ray")


__all__ = ["LocalExecutor", "RayExecutor", "RunFailure", "make_executor"]
