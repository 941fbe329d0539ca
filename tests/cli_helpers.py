"""Running the `cnnrt` command in a fresh process, as a user does, for the end-to-end tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cnnrt(*args, check: bool = True, cwd=None, env: dict | None = None, timeout: float = 300, umask: int | None = None):
    """`python -m cnnrt ARGS` with this checkout's cnnrt; check=True asserts exit status 0."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    p = subprocess.run([sys.executable, "-m", "cnnrt", *map(str, args)], capture_output=True, text=True,
                       env=full_env, cwd=cwd or ROOT, timeout=timeout, preexec_fn=pre)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def assert_clean_error(p, *fragments: str) -> None:
    """Exit status 2, each fragment in the message, no Python traceback."""
    assert p.returncode == 2, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("cnnrt: error: ") or "\ncnnrt: error: " in p.stderr, p.stderr
    for f in fragments:
        assert f in p.stderr, f"{f!r} not in {p.stderr!r}"


# Root reads and writes every file whatever its mode, so as root the permission errors a user
# would meet are raised by the OS layer of the child process itself: os.open/os.stat/os.mkdir on
# the named paths fail with EACCES exactly as the kernel would fail them for a user. As any other
# user the files' modes are really changed instead (see `denied`). The injection reaches Python's
# own file calls only, not those of compiled libraries (safetensors opens files in Rust).
_DENY = r"""
import builtins, errno, io, os, sys
READ, WRITE = {read!r}, {write!r}
def _hit(path, prefixes):
    try:
        p = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return False
    return any(p == d or p.startswith(d.rstrip('/') + '/') for d in prefixes)
def _deny(path):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
_open, _os_open, _stat, _mkdir = builtins.open, os.open, os.stat, os.mkdir
def open_(file, mode='r', *a, **k):
    if isinstance(file, (str, bytes, os.PathLike)):
        if _hit(file, READ) or (any(c in mode for c in 'wax+') and _hit(os.path.dirname(os.path.abspath(file)), WRITE)):
            _deny(file)
    return _open(file, mode, *a, **k)
def os_open(path, flags, *a, **k):
    if _hit(path, READ) or (flags & os.O_CREAT and _hit(os.path.dirname(os.path.abspath(path)), WRITE)):
        _deny(path)
    return _os_open(path, flags, *a, **k)
def stat_(path, *a, **k):
    if isinstance(path, (str, bytes, os.PathLike)) and _hit(path, READ) and os.path.abspath(path) not in READ:
        _deny(path)  # inside an unreadable directory: not even its existence can be seen
    return _stat(path, *a, **k)
def mkdir_(path, *a, **k):
    if _hit(os.path.dirname(os.path.abspath(path)), WRITE):
        _deny(path)
    return _mkdir(path, *a, **k)
builtins.open = io.open = open_
os.open, os.stat, os.mkdir = os_open, stat_, mkdir_
from cnnrt.cli import main
sys.argv = ['cnnrt'] + {args!r}
raise SystemExit(main({args!r}))
"""


def denied(*args, read=(), write=()):
    """Run cnnrt with the paths in `read` unreadable (files: cannot be opened; directories: their
    entries cannot be seen) and the directories in `write` not writable."""
    read = [os.path.abspath(p) for p in read]
    write = [os.path.abspath(p) for p in write]
    if os.geteuid() != 0:
        saved = []
        for p in read:
            saved.append((p, os.stat(p).st_mode))
            os.chmod(p, 0)
        for p in write:
            saved.append((p, os.stat(p).st_mode))
            os.chmod(p, 0o555)
        try:
            return cnnrt(*args, check=False)
        finally:
            for p, mode in saved:
                os.chmod(p, mode)
    code = _DENY.format(read=read, write=write, args=[str(a) for a in args])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)

