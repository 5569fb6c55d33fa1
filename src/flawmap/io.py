"""Safe file output: the one place where flawmap writes files and folders atomically.

* ``atomic_write(path, write)``: ``write(tmp)`` fills a temporary file next to ``path``, which is then
  renamed over it (``os.replace``); readers see the old file or the new one, never half of one.
* ``atomic_replace_dir(target, build)``: ``build(tmp)`` fills a temporary folder next to ``target``;
  the folder then takes ``target``'s place. An existing ``target`` is *exchanged* with the new folder
  in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so at no moment is there nothing at ``target``
  (a kill at any point leaves the old or the new folder, plus at most a hidden temporary folder).
  Several processes may replace the same folder at once: each attempt either exchanges or retries.
* ``atomic_create_dir(target, build)``: the same for a folder made once and never replaced (the
  synthetic dataset): whichever process finishes first wins, the others discard their copy.
* ``check_replaceable(path, ...)``: the rule for what an output folder may replace: nothing there, an
  empty folder, or a folder that flawmap itself wrote (recognised by the caller's ``is_ours``);
  anything else (a file, a user's folder with files in it) is refused, never deleted.
* ``check_writable(folder)``: fail before any long computation when the output folder cannot be
  written (read-only mount, immutable folder, no permission); it creates and removes a probe file,
  so it also works as root, where permission bits are not enforced.
* ``exclusive_lock(path)``: an advisory ``flock`` lock file, held by one process at a time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputError

log = logging.getLogger(__name__)

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2_fn() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a libc without renameat2 (glibc < 2.28)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _renameat2_fn()


def _rename2(src: Path, dst: Path, flags: int) -> None:
    """renameat2(src, dst, flags); OSError(errno) on failure (ENOSYS/EINVAL when not supported)."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def _unsupported(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then rename it to ``path``.

    The temporary name ends with ``path``'s suffix, so writers that pick a format by suffix work.

    The temporary file is removed on any failure (including KeyboardInterrupt), so a failed write
    leaves ``path`` as it was and no stray file beside it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _swap_into_place(tmp: Path, target: Path) -> Path | None:
    """Put folder ``tmp`` at ``target``; return where the previous ``target`` now is (to delete), or None."""
    for _ in range(100):  # only concurrent writers make this loop more than once
        if target.exists() or target.is_symlink():
            try:
                _rename2(tmp, target, _RENAME_EXCHANGE)
                return tmp  # tmp now holds the old folder
            except FileNotFoundError:
                continue  # removed meanwhile: place it below
            except OSError as exc:
                if not _unsupported(exc):
                    raise
                # no atomic exchange on this system / file system: move the old folder aside first
                old = Path(tempfile.mkdtemp(prefix=f".{target.name[:40]}.old-", dir=target.parent))
                try:
                    os.replace(target, old)  # an empty folder may be replaced by a folder
                except FileNotFoundError:
                    old.rmdir()
                    continue
                try:
                    os.rename(tmp, target)
                except OSError:
                    os.rename(old, target)  # put the old one back
                    raise
                return old
        try:
            _rename2(tmp, target, _RENAME_NOREPLACE)
            return None
        except FileExistsError:
            continue  # created meanwhile: exchange with it
        except OSError as exc:
            if not _unsupported(exc):
                raise
            try:
                os.rename(tmp, target)  # fails (ENOTEMPTY/EEXIST) if a non-empty folder appeared meanwhile
                return None
            except OSError as exc2:
                if exc2.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
    raise OutputError(f"{target}: could not replace the folder (too many concurrent writers)")


def atomic_replace_dir(target: str | os.PathLike[str], build: Callable[[Path], object]) -> Path:
    """Build a folder with ``build(tmp)`` and put it at ``target`` in one step (see the module doc).

    Never leaves ``target`` missing: the old folder is exchanged with the new one, then deleted.
    Does not check *what* it replaces: callers check that first with ``check_replaceable``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:40]}.tmp-", dir=target.parent))
    try:
        build(tmp)
        old = _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def atomic_create_dir(target: str | os.PathLike[str], build: Callable[[Path], object]) -> bool:
    """Build a folder with ``build(tmp)`` and move it to ``target`` unless something is there by then
    (another process that built it first): never replaces. True when this call created ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:40]}.tmp-", dir=target.parent))
    try:
        build(tmp)
        try:
            _rename2(tmp, target, _RENAME_NOREPLACE)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if not _unsupported(exc):
                raise
        try:
            os.rename(tmp, target)  # replaces at most an empty folder
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(path: str | os.PathLike[str], is_ours: Callable[[Path], bool], what: str,
                      overwrite: bool = True, force_flag: str = "--force") -> None:
    """Raise OutputError unless a ``what`` may be written at ``path``.

    Allowed: nothing at ``path``, an empty folder, or (with ``overwrite``) a folder for which
    ``is_ours(path)`` is true. Refused: a file, a symlink, a non-empty folder flawmap did not write.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise OutputError(f"{path} exists and is not a folder; refusing to replace it with a {what} "
                          "(choose another output path)")
    if not any(path.iterdir()):
        return
    if not is_ours(path):
        raise OutputError(f"{path} is a folder with files that are not a {what}; refusing to overwrite it "
                          "(nothing was changed; choose a new or empty output folder)")
    if not overwrite:
        raise OutputError(f"{path} is already a {what}; pass {force_flag} to replace it")


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Raise OutputError when files cannot be created in ``folder`` (or, if it does not exist yet, in
    its nearest existing parent). Tries it for real (probe file), so it holds for root too."""
    folder = Path(folder).absolute()
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        raise OutputError(f"cannot write to {folder}: {probe_dir} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".flawmap-write-test-", dir=probe_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise OutputError(f"cannot write to {folder}: {exc.strerror or exc} (check that the folder is writable "
                          "and the disk is not full, or choose another output folder)") from None


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created if missing) for the block.

    A second process (or a second lock in this one) raises OutputError at once, naming ``what``
    and the process id recorded by the holder, instead of working on the same files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise OutputError(f"{what} is busy: another flawmap process (pid {holder}) is using it "
                              f"(lock {path}); wait for it to finish or use another output folder") from None
        except OSError as exc:  # ENOLCK / EOPNOTSUPP: a network file system without flock
            log.warning("%s: cannot take the lock %s (%s); make sure no other flawmap process uses it",
                        what, path, exc.strerror or exc)
            yield
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_replace_dir", "atomic_create_dir",
           "check_replaceable",
           "check_writable", "exclusive_lock"]
