"""Atomic writes: a file or a set of files appears whole or not at all, with umask-following modes.

Everything is built in a temporary file or directory beside its destination (the same
filesystem, so the final move is one rename) and moved into place only when it is complete.
A failure or an interrupt removes the temporary copy and leaves existing files untouched.
Existing files are replaced only when the caller says so (`overwrite=True`, the CLI's --force).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from .errors import CnnrtError

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask (read by setting and restoring it: the only portable way)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _apply_umask(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the result the mode a plain open() or mkdir() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def _tree_modes(root: Path) -> None:
    _apply_umask(root, directory=True)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            _apply_umask(Path(dirpath) / d, directory=True)
        for f in filenames:
            _apply_umask(Path(dirpath) / f)


def _check_parent(dest: Path) -> None:
    """Create missing parent directories (as mkdir -p); refuse a parent that is a file."""
    parent = dest.parent
    if parent.exists() and not parent.is_dir():
        raise CnnrtError(f"{dest}: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CnnrtError(f"{dest}: cannot create directory {parent} ({e.strerror or e})") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary path beside `path`; write the file there. On success it replaces `path`
    in one rename (mode from the umask); on any failure it is removed and `path` is untouched."""
    dest = Path(path)
    _check_parent(dest)
    if dest.is_dir():
        raise CnnrtError(f"{dest}: is a directory (expected a file name)")
    if dest.exists() and not overwrite:
        raise CnnrtError(f"{dest}: already exists (use --force to replace it)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    except OSError as e:
        raise CnnrtError(f"{dest}: cannot write in {dest.parent} ({e.strerror or e})") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _apply_umask(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json(path: str | os.PathLike, obj, indent: int = 1) -> None:
    """obj as JSON at path, atomically (atomic_write), replacing what was there: benchmark results."""
    import json

    with atomic_write(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent))


def conflicts(dest: str | os.PathLike, names) -> list[Path]:
    """The entries among `names` that already exist in directory `dest`."""
    dest = Path(dest)
    return [dest / n for n in names if os.path.lexists(dest / n)]


class StagedDir:
    """A temporary directory beside `dest` whose entries move into `dest` on `commit()`.

    `dest` is created if missing (and its parents). Entries of `dest` that the staged
    directory does not hold are kept; an entry it does hold and `dest` already has is refused
    unless `overwrite`, and then replaced (a directory as a whole). Use as a context manager:
    leaving it without a commit (an error, an interrupt) deletes the staged files.
    """

    def __init__(self, dest: str | os.PathLike, overwrite: bool = False):
        self.dest = Path(dest)
        self.overwrite = overwrite
        if self.dest.exists() and not self.dest.is_dir():
            raise CnnrtError(f"{self.dest}: is a file (expected a directory)")
        _check_parent(self.dest)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", suffix=".partial", dir=self.dest.parent))
        except OSError as e:
            raise CnnrtError(f"{self.dest}: cannot write in {self.dest.parent} ({e.strerror or e})") from None
        self.committed = False

    def check(self, names) -> None:
        """Refuse now, before any long work, if `names` would overwrite files without `overwrite`."""
        if self.overwrite:
            return
        taken = conflicts(self.dest, sorted(names))
        if taken:
            raise CnnrtError(f"{self.dest}: already holds {', '.join(p.name for p in taken)} "
                             f"(use --force to replace, or choose another output directory)")

    def commit(self) -> None:
        names = sorted(os.listdir(self.path))
        self.check(names)
        _tree_modes(self.path)
        if not self.dest.exists():
            os.rename(self.path, self.dest)  # the whole directory appears at once
            self.committed = True
            return
        old = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", suffix=".old", dir=self.dest.parent))
        moved_out, moved_in = [], []
        try:
            for n in names:
                target = self.dest / n
                if os.path.lexists(target):
                    os.rename(target, old / n)
                    moved_out.append(n)
                os.rename(self.path / n, target)
                moved_in.append(n)
        except BaseException:  # put back what was there: all of the old or all of the new
            for n in reversed(moved_in):
                with contextlib.suppress(OSError):
                    os.rename(self.dest / n, self.path / n)
            for n in reversed(moved_out):
                with contextlib.suppress(OSError):
                    os.rename(old / n, self.dest / n)
            shutil.rmtree(old, ignore_errors=True)
            raise
        self.committed = True
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)

    def discard(self) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.discard()
