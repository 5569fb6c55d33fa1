"""flawmap.io: the one atomic-write helper (files, folders that are never missing, locks)."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flawmap.io as fio
from flawmap.errors import OutputError


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _build(files: dict[str, str]):
    def build(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return build


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_replace_dir_replaces_and_leaves_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(fio, "_renameat2", None)
    target = tmp_path / "out"
    fio.atomic_replace_dir(target, _build({"a.txt": "one", "b.txt": "one"}))
    fio.atomic_replace_dir(target, _build({"a.txt": "two"}))
    assert _tree(target) == {"a.txt": b"two"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old folders left


def test_kill_after_the_swap_leaves_the_new_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill between 'new folder in place' and 'old folder deleted' (the old two-rename window) must
    leave a complete folder at the target, never nothing."""
    target = tmp_path / "out"
    fio.atomic_replace_dir(target, _build({"a.txt": "old"}))

    def killed(*a, **k):
        raise SystemExit("killed")

    monkeypatch.setattr(fio.shutil, "rmtree", killed)
    with pytest.raises(SystemExit):
        fio.atomic_replace_dir(target, _build({"a.txt": "new"}))
    assert _tree(target) == {"a.txt": b"new"}


def test_failed_build_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    fio.atomic_replace_dir(target, _build({"a.txt": "old"}))

    def bad(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fio.atomic_replace_dir(target, bad)
    assert _tree(target) == {"a.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_keeps_suffix_and_cleans_up(tmp_path: Path) -> None:
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp.suffix)
        raise OSError(28, "No space left on device")

    (tmp_path / "x.png").write_bytes(b"old")
    with pytest.raises(OSError):
        fio.atomic_write(tmp_path / "x.png", write)
    assert seen == [".png"] and _tree(tmp_path) == {"x.png": b"old"}


def test_check_replaceable_rules(tmp_path: Path) -> None:
    ours = lambda p: (p / "mine").is_file()  # noqa: E731
    fio.check_replaceable(tmp_path / "missing", ours, "thing")
    (tmp_path / "empty").mkdir()
    fio.check_replaceable(tmp_path / "empty", ours, "thing")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "mine").write_text("x")
    fio.check_replaceable(tmp_path / "ours", ours, "thing")
    with pytest.raises(OutputError, match="--force"):
        fio.check_replaceable(tmp_path / "ours", ours, "thing", overwrite=False)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="refusing"):
        fio.check_replaceable(tmp_path / "theirs", ours, "thing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        fio.check_replaceable(tmp_path / "file", ours, "thing")


def test_check_writable(tmp_path: Path, readonly_dir) -> None:
    fio.check_writable(tmp_path / "new" / "deeper")  # probes the nearest existing parent
    ro = readonly_dir()
    with pytest.raises(OutputError, match="cannot write"):
        fio.check_writable(ro)
    with pytest.raises(OutputError, match="cannot write"):
        fio.check_writable(ro / "sub")


def _hammer(args: tuple[str, int]) -> int:
    from flawmap.bench.sweep import write_artifacts

    out, worker = args
    for i in range(25):
        write_artifacts(Path(out), "KEY", {"a.png": f"{worker}-{i}".encode(), "b.png": f"{worker}-{i}".encode()})
    return worker


def test_concurrent_artifact_writes_never_fail(tmp_path: Path) -> None:
    """Two processes replacing the same artifact folder (a 2-process stress test once failed half of
    these with ENOTEMPTY and left .KEY.old-* behind)."""
    with mp.get_context("spawn").Pool(2) as pool:
        assert sorted(pool.map(_hammer, [(str(tmp_path), 0), (str(tmp_path), 1)])) == [0, 1]
    folder = tmp_path / "artifacts" / "KEY"
    files = _tree(folder)
    assert set(files) == {"a.png", "b.png"} and files["a.png"] == files["b.png"]  # one writer's complete set
    assert [p.name for p in (tmp_path / "artifacts").iterdir()] == ["KEY"]


def test_exclusive_lock_refuses_a_second_process(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, flawmap.io as f\n"
         f"with f.exclusive_lock({str(lock)!r}, 'x'):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"busy.*pid {holder.pid}"):
            with fio.exclusive_lock(lock, "x"):
                pass
    finally:
        holder.communicate("", timeout=30)
    with fio.exclusive_lock(lock, "x"):  # free again once the holder is gone
        time.sleep(0)


def test_create_dir_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    assert fio.atomic_create_dir(target, _build({"a.txt": "first"})) is True
    assert fio.atomic_create_dir(target, _build({"a.txt": "second"})) is False
    assert _tree(target) == {"a.txt": b"first"} and [p.name for p in tmp_path.iterdir()] == ["ds"]
