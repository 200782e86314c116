"""Atomic writes: every output goes to a temporary file in the same folder, then is renamed.

A run killed at any moment leaves either the old file or the complete new one, never half
of one. Refusing to clobber existing outputs is part of the same contract.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qaie.errors import QaieError


def check_writable(path: Path, overwrite: bool = True) -> None:
    """Fail early, before any work, if `path` cannot be written (or exists and must not be)."""
    if path.exists() and not overwrite:
        raise QaieError(f"{path}: output exists; pass --overwrite to replace it")
    if path.is_dir():
        raise QaieError(f"{path}: is a directory, expected a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise QaieError(f"{path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise QaieError(f"{path}: folder {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    The suffix is kept so writers that choose a format from the extension still work. An
    OSError while writing or renaming (disk full, a folder in the way) becomes a QaieError
    naming `path`.
    """
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    except OSError as err:
        raise QaieError(f"{path}: cannot write ({_why(err)})") from err
    os.close(fd)
    os.chmod(tmp_name, _new_file_mode())  # mkstemp makes it owner-only; outputs are ordinary files
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise QaieError(f"{path}: cannot write ({_why(err)})") from err
        raise


def _why(err: OSError) -> str:
    return err.strerror or " ".join(str(err).split()) or type(err).__name__


def _new_file_mode() -> int:
    """The permissions open() would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
