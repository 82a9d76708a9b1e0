"""One atomic write: build the result under a temporary name beside it, then rename it.

A crash or an error leaves either the old file (or folder) or the new one, never half of
one. :func:`utils.checkpoint.save_atomically`, :func:`utils.data.download`,
:func:`utils.data.write_imdb_csv` and the exports of :mod:`utils.export` use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path ``.<name>.tmp-<pid>`` beside ``dest`` (its folder is created).

    Write a file there (or create a folder and fill it). When the block ends without an
    error the temporary is renamed onto ``dest`` (``os.replace``, atomic for files); a folder
    replaces an old folder by two renames, the old one removed afterwards. On an error the
    temporary is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and dest.is_dir():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old, dest)  # put the old folder back
                raise
            _remove(old)
        else:
            os.replace(tmp, dest)
    finally:
        _remove(tmp)
