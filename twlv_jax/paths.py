"""Paths on a local disk and in a Cloud Storage bucket (`gs://...`) alike.

Every function takes and returns `str` paths. Local paths go to `os` as before; paths
with a scheme (`gs://bucket/folder`) go through `etils.epath`, which reaches Cloud
Storage with `gcsfs` (or TensorFlow's gfile where TensorFlow is installed). gcsfs reads
`STORAGE_EMULATOR_HOST`, so the tests run against an emulated bucket.

A bucket has no folders and no atomic rename: `makedirs` only marks the prefix,
`replace` copies then deletes, and an object becomes visible only once it is whole, so
writers that rename a finished temporary file locally write the object directly there
(`atomic_write`).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO

from etils import epath


def is_remote(path: str) -> bool:
    """Whether `path` names an object store (`gs://`, ...) rather than a local file."""
    return "://" in os.fspath(path)


def _remote(path: str) -> epath.Path:
    return epath.Path(os.fspath(path))


def _filesystem(path: str):
    """(fsspec filesystem, path without its scheme) of a remote path, for listings that
    epath does not offer on buckets."""
    import fsspec
    return fsspec.core.url_to_fs(path)


def absolute(path: str) -> str:
    return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def join(path: str, *parts: str) -> str:
    return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def dirname(path: str) -> str:
    if not is_remote(path):
        return os.path.dirname(path)
    scheme, rest = path.split("://", 1)
    parent = posixpath.dirname(rest.rstrip("/"))
    return f"{scheme}://{parent or rest.split('/')[0]}"


def normpath(path: str) -> str:
    """os.path.normpath, keeping a scheme's `//` (`gs://b/x/../y` -> `gs://b/y`)."""
    if not is_remote(path):
        return os.path.normpath(path)
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.normpath(rest)}"


def exists(path: str) -> bool:
    return _remote(path).exists() if is_remote(path) else os.path.exists(path)


def isfile(path: str) -> bool:
    return _remote(path).is_file() if is_remote(path) else os.path.isfile(path)


def isdir(path: str) -> bool:
    return _remote(path).is_dir() if is_remote(path) else os.path.isdir(path)


def getsize(path: str) -> int:
    return _remote(path).stat().length if is_remote(path) else os.path.getsize(path)


def listdir(path: str) -> list[str]:
    """The names in a folder: locally FileNotFoundError when there is none; in a bucket,
    where a folder exists only while it holds objects, none is an empty one."""
    if not is_remote(path):
        return os.listdir(path)
    return [p.name for p in _remote(path).iterdir()] if _remote(path).is_dir() else []


def walk_files(path: str) -> Iterator[str]:
    """Every file under a folder, in sorted order of its path."""
    if is_remote(path):       # one listing of the prefix (epath's rglob is refused on GCS)
        filesystem, root = _filesystem(path)
        scheme = path.split("://", 1)[0]
        yield from sorted(f"{scheme}://{key}" for key in filesystem.find(root))
        return
    for root, folders, files in os.walk(path):
        folders.sort()
        yield from (os.path.join(root, f) for f in sorted(files))


def glob(path: str, pattern: str) -> list[str]:
    """The paths under a folder that match a glob `pattern` (`*/info.json`), sorted."""
    if not is_remote(path):
        return sorted(str(p) for p in epath.Path(os.fspath(path)).glob(pattern))
    filesystem, root = _filesystem(path)
    scheme = path.split("://", 1)[0]
    return sorted(f"{scheme}://{key}" for key in filesystem.glob(f"{root.rstrip('/')}/{pattern}"))


def makedirs(path: str) -> None:
    if is_remote(path):
        _remote(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def open(path: str, mode: str = "r", **kwargs) -> IO:
    if not is_remote(path):
        return builtins.open(path, mode, **kwargs)
    if "a" in mode:
        raise ValueError(f"{path}: objects in a bucket cannot be appended to")
    kwargs.pop("newline", None)
    return _remote(path).open(mode, **kwargs)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def append(path: str, text: str) -> None:
    """Adds `text` at the end of a file, made when missing: locally in append mode; in a
    bucket, whose objects cannot be appended to, the object is read and written whole."""
    if not is_remote(path):
        with builtins.open(path, "a", newline="", encoding="utf-8") as f:
            f.write(text)
        return
    before = read_bytes(path).decode("utf-8") if exists(path) else ""
    with open(path, "w", encoding="utf-8") as f:
        f.write(before + text)


def upload(local: str, path: str) -> None:
    """Copies the local file `local` to `path` (local or in a bucket), whole."""
    with builtins.open(local, "rb") as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file with the contents of `path`, for readers that need one (safetensors):
    `path` itself when local, else a temporary copy removed on exit."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="twlv-copy-") as folder:
        local = os.path.join(folder, posixpath.basename(path.rstrip("/")))
        with open(path, "rb") as source, builtins.open(local, "wb") as target:
            shutil.copyfileobj(source, target)
        yield local


def replace(source: str, target: str) -> None:
    """Renames a file or folder (in a bucket: copies each object, then deletes it)."""
    if is_remote(source) or is_remote(target):
        _remote(source).rename(target)
    else:
        os.replace(source, target)


def remove(path: str) -> None:
    if is_remote(path):
        _remote(path).unlink()
    else:
        os.remove(path)


def rmtree(path: str) -> None:
    """Deletes a folder and everything under it; nothing when it does not exist."""
    if is_remote(path):
        if _remote(path).exists():
            _remote(path).rmtree()
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """A file that appears at `path` only once written whole: locally a temporary file
    beside it, renamed at the end; in a bucket the object itself (uploaded on close)."""
    if is_remote(path):
        with open(path, mode, **kwargs) as f:
            yield f
        return
    folder, name = os.path.split(os.path.abspath(path))
    temp = os.path.join(folder, f".{name}.tmp")
    with open(temp, mode, **kwargs) as f:
        yield f
    os.replace(temp, path)
