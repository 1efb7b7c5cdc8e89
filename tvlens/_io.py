"""The one atomic writer: every file tvlens saves goes through :func:`atomic_write`.

Context:
    A save must never leave a half-written file where the user's good one was, even when the
    process is killed (``kill -9``, out-of-memory, a closed laptop). So the bytes go to a temp
    file in the target's own folder (same file system, so the final rename is atomic), are
    flushed to disk (``fsync``), and only then replace the target (``os.replace``); the folder
    is fsynced too so the rename itself survives a power cut.

    A killed writer leaves its temp file behind. Temp names carry the writer's process id
    (``.<name>.<pid>.<random>.tmp``), so the next save of the same target removes the temps of
    writers that are no longer running, and never a temp that a live process is still writing.

    New files get mode ``0o666 & ~umask`` like any file your shell creates (``tempfile.mkstemp``
    would make them ``0600``, unreadable to collaborators); replacing a file keeps its mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tvlens.errors import OutputExistsError

log = logging.getLogger(__name__)

_LEGACY_AGE_S = 3600.0  # temps of older tvlens versions (no pid in the name) are stale after this


def _temp_pattern(name: str) -> re.Pattern:
    # ours: .<name>.<pid>.<hex>.tmp ; older tvlens (mkstemp): .<name>.<8 chars> with or without .tmp
    return re.compile(rf"^\.{re.escape(name)}\.(?:(?P<pid>\d+)\.[0-9a-f]+\.tmp|[A-Za-z0-9_]{{8}}(?:\.tmp)?)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temp files of earlier, killed saves of ``path`` (their writer is no longer running)."""
    path = Path(path)
    pattern = _temp_pattern(path.name)
    out = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    now = time.time()
    for p in entries:
        m = pattern.match(p.name)
        if m is None:
            continue
        pid = m.group("pid")
        if pid is not None:
            if not _pid_alive(int(pid)):
                out.append(p)
        else:
            with contextlib.suppress(OSError):
                if now - p.lstat().st_mtime > _LEGACY_AGE_S:
                    out.append(p)
    return out


def clean_stale_temps(path: str | os.PathLike) -> int:
    """Remove :func:`stale_temps` of ``path``; returns how many were removed."""
    n = 0
    for p in stale_temps(path):
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            n += 1
    if n:
        log.info("removed %d temp file(s) left by interrupted saves of %s", n, path)
    return n


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temp name next to ``path`` that :func:`clean_stale_temps` recognises."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


def _fsync(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, overwrite: bool = True) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file, which then replaces ``path``.

    ``write`` receives the temp file's path (the file already exists, empty, with the final
    mode) and must write the whole content there; it may replace the file. If it raises, the
    temp file is removed and ``path`` is untouched. With ``overwrite=False`` an existing
    ``path`` raises :class:`~tvlens.errors.OutputExistsError` (checked again at the final step,
    so a file appearing meanwhile is not clobbered either).

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> atomic_write(target, lambda tmp: tmp.write_text("hello")).read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(f"{str(path)!r} already exists; choose another path, delete it, or allow overwriting")
    clean_stale_temps(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    try:
        with contextlib.suppress(OSError):
            if overwrite and path.is_file():  # replacing a file keeps its mode
                os.chmod(fd if os.chmod in os.supports_fd else tmp, path.stat().st_mode & 0o7777)
        mode = os.fstat(fd).st_mode & 0o7777
        os.close(fd)
        fd = -1
        write(tmp)
        if os.stat(tmp).st_mode & 0o7777 != mode:  # a writer that replaced the temp file with its own
            os.chmod(tmp, mode)
        _fsync(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: never clobbers
            except FileExistsError:
                raise OutputExistsError(f"{str(path)!r} appeared while saving; nothing was overwritten") from None
            except OSError:  # file systems without hard links
                if os.path.lexists(path):
                    raise OutputExistsError(f"{str(path)!r} already exists; nothing was overwritten") from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
        _fsync(path.parent, directory=True)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_dir(path: str | os.PathLike, fill: Callable[[Path], object]) -> Path:
    """Write a directory atomically: ``fill(tmpdir)`` creates its files, then it replaces ``path``.

    An existing ``path`` is moved aside first and removed after the swap (directories cannot be
    replaced in one step), so at every moment either the old or the new directory is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_path(path)
    tmp.mkdir(mode=0o777)  # the kernel applies the umask
    try:
        probe = tmp / ".mode-probe"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        file_mode = probe.stat().st_mode & 0o777  # 0o666 & ~umask, learnt without touching the umask
        probe.unlink()
        fill(tmp)
        for p in tmp.rglob("*"):
            if p.is_file() and not p.is_symlink():
                if p.stat().st_mode & 0o777 != file_mode:  # writers such as safetensors create 0600 files
                    os.chmod(p, file_mode)
                _fsync(p)
        if path.exists():
            backup = temp_path(path)  # recognised (and removed) by the next save if we die here
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# --- the user cache and file checksums ---------------------------------------------------------

CACHE_ENV = "TVLENS_CACHE_DIR"  # moves the cache (default: $XDG_CACHE_HOME/tvlens or ~/.cache/tvlens)


def cache_dir() -> Path:
    """Where tvlens caches converted models and downloads: ``$TVLENS_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/tvlens``, else ``~/.cache/tvlens``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tvlens"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
