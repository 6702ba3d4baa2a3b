"""Atomic file writes, one definition for the whole project: a unique temporary beside the target, then
a rename, so a reader never sees a half-written file or folder, two concurrent writers never share a
scratch name, and an interrupted or failed run never destroys the previous output.

A temporary is named `.TARGET.PID.RANDOM.tmp`; the next write of the same target removes the leftovers
of writers that no longer run (a kill leaves one behind)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Remove `.TARGET.PID.*.tmp` / `.old` beside `target` left by a process that is gone."""
    prefix = f".{target.name}."
    with contextlib.suppress(OSError):
        for leftover in target.parent.glob(f"{glob.escape(prefix)}*"):
            pid = leftover.name[len(prefix) :].split(".", 1)[0]
            if leftover.suffix in (".tmp", ".old") and pid.isdigit() and not _alive(int(pid)):
                _remove(leftover)


def _temporary(target: Path, *, folder: bool, suffix: str = ".tmp") -> Path:
    prefix = f".{target.name}.{os.getpid()}."
    if folder:
        return Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix, suffix=suffix))
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
    os.close(handle)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_atomically(temporary: Path, target: Path) -> None:
    """Move a finished file or folder onto `target` with renames only: a reader sees the old or the new
    one, never half of either. A folder replaces a folder (the old one is removed after the swap)."""
    if temporary.is_dir() and target.exists():
        if not target.is_dir():
            raise OSError(f"{target}: exists and is not a folder, so a folder cannot replace it")
        retired = _temporary(target, folder=True, suffix=".old")
        os.rename(target, retired / "previous")
        os.rename(temporary, target)
        shutil.rmtree(retired, ignore_errors=True)
        return
    os.replace(temporary, target)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Yield a unique temporary file (or, with `folder`, an empty folder) beside `path`; when the block
    ends normally it replaces `path`, when it raises it is removed and `path` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    temporary = _temporary(target, folder=folder)
    try:
        yield temporary
        replace_atomically(temporary, target)
    except BaseException:
        _remove(temporary)
        raise


@contextlib.contextmanager
def atomic_files_into(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder inside `folder`; when the block ends normally, every entry written there
    replaces its namesake in `folder` by a rename, and whatever else `folder` holds (a Trainer's
    checkpoints) stays. When the block raises, nothing in `folder` changes."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    marker = target / ".staging"
    remove_stale_temporaries(marker)
    staging = _temporary(marker, folder=True)
    try:
        yield staging
        for entry in sorted(staging.iterdir()):
            replace_atomically(entry, target / entry.name)
    finally:
        _remove(staging)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename it into place."""
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def save_figure_atomic(figure: Any, path: str | os.PathLike, **options: Any) -> Path:
    """`figure.savefig` through a temporary (the format comes from the target's suffix, not the temporary's)."""
    target = Path(path)
    options.setdefault("format", target.suffix.lstrip(".") or "png")
    with atomic_output(target) as temporary:
        figure.savefig(temporary, **options)
    return target


def folder_fingerprint(path: str | os.PathLike) -> str | None:
    """A digest of every file's relative path, size and mtime under a folder (or of one file), so that
    a retrained model in the same folder is told apart from the old one; None when `path` is not local
    (a Hub id is its own identity)."""
    root = Path(path).expanduser()
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        if file.name.startswith(".") and file.suffix in (".tmp", ".old"):
            continue
        stat = file.stat()
        digest.update(
            f"{file.relative_to(root) if file != root else file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()[:20]


def model_fingerprint(model: str | os.PathLike) -> str:
    """What identifies a model folder's model: `folder_fingerprint` of its own top-level files, leaving out
    its card (README.md, rewritten by `evaluate --update-card`), hidden files and subfolders (checkpoints,
    an evaluation's output); a file by itself; a Hub id as it is."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return folder_fingerprint(folder) or str(model)
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix != ".md" and not path.name.startswith(".")
    )
    return hashlib.sha256("".join(str(folder_fingerprint(file)) for file in files).encode()).hexdigest()[:20]
