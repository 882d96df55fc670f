"""Cache folders and safe file writing: verified downloads and atomic saves.

Everything eelib writes to disk goes through here, so that nothing half-written is ever left
behind: a download goes to a temporary file in the target folder, is checked against its
checksum, and only then renamed into place; a save does the same without the download.

Folders (created on first use):

* ``EELIB_CACHE`` — the root, default ``~/.cache/eelib``;
* ``EELIB_DATA`` — downloaded data sets, default ``<root>/data``;
* ``<root>/models`` — trained course models (see :mod:`eelib.vision.zoo`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock
from eelib.errors import DownloadError

ENV_CACHE = "EELIB_CACHE"
ENV_DATA = "EELIB_DATA"
DEFAULT_TIMEOUT_S = 30.0


def cache_root() -> Path:
    """The root cache folder: ``$EELIB_CACHE`` or ``~/.cache/eelib``."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "eelib").expanduser()


def data_dir() -> Path:
    """The data cache folder: ``$EELIB_DATA`` or ``<cache root>/data``."""
    env = os.environ.get(ENV_DATA)
    return Path(env).expanduser() if env else cache_root() / "data"


def models_dir() -> Path:
    """The folder for trained course models: ``<cache root>/models``."""
    return cache_root() / "models"


def ensure_writable_dir(path: str | os.PathLike, *, what: str = "cache folder", hint: str | None = None) -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    Args:
        path: the folder.
        what: how the error names it, e.g. "data cache folder".
        hint: what the user can do instead (default: the environment variables that move the cache).

    Raises:
        PermissionError: the folder cannot be created or written, with the path and the hint.
    """
    folder = Path(path).expanduser()
    hint = hint or (f"set {ENV_DATA} (data) or {ENV_CACHE} (everything) to a folder you can write, "
                    f"e.g. {ENV_CACHE}=/tmp/eelib")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"the {what} {str(folder)!r} is not writable ({err.strerror or err}); "
                              f"{hint}") from err
    return folder


def file_digest(path: str | os.PathLike, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks (``algorithm``: any name ``hashlib`` knows)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_ok(path: str | os.PathLike, expected: str, algorithm: str = "md5") -> bool:
    """True when the file exists and its digest equals ``expected``."""
    return Path(path).is_file() and file_digest(path, algorithm) == expected.lower()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it to ``dest``, else delete it.

    Works for files and folders: write whatever you like at the yielded path. A file replaces
    ``dest`` in one atomic rename. A folder cannot be renamed over a folder, so it is swapped
    under a lock file beside it (``.<name>.lock``): the old folder is moved aside, the new one
    renamed into place, the old one deleted. Two processes replacing the same folder take turns
    (both succeed, the last one wins), and a reader that uses :func:`folder_ready` never sees
    the folder missing: while a swap runs it waits for the lock.

    Only a folder replaces a folder: a file written for a ``dest`` that is an existing folder is
    refused (``IsADirectoryError``) and the folder is left as it was, and so is a file that a
    folder was written for (``NotADirectoryError``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)) / dest.name
    try:
        yield tmp
        if tmp.is_dir():
            with FileLock(str(_swap_lock(dest))):  # checked under the lock: another process may be mid-swap
                if dest.exists() and not (dest.is_dir() and not dest.is_symlink()):
                    raise NotADirectoryError(f"{str(dest)!r} is a file: a folder was written to replace it; remove "
                                             f"the file or give another path")
                aside = None
                if dest.is_dir() and not dest.is_symlink():
                    aside = tmp.parent / f"{dest.name}.old"
                    os.rename(dest, aside)
                os.replace(tmp, dest)
        else:
            if dest.is_dir() and not dest.is_symlink():
                raise IsADirectoryError(_folder_in_the_way(dest))
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)  # the temporary folder, and an old folder moved aside


def _folder_in_the_way(dest: Path) -> str:
    return (f"{str(dest)!r} is a folder: a file cannot replace it (that would delete the folder and everything "
            f"in it); give the path of a file, e.g. {str(dest / 'results.json')!r}")


def save_json(data, dest: str | os.PathLike, *, indent: int = 2) -> Path:
    """Write ``data`` as JSON to ``dest`` atomically: a temporary file, read back and checked, then renamed.

    Raises:
        IsADirectoryError: ``dest`` is an existing folder (it is left untouched).
    """
    dest = Path(dest)
    if dest.is_dir() and not dest.is_symlink():  # refused before anything is written (atomic_path would too)
        raise IsADirectoryError(_folder_in_the_way(dest))
    with atomic_path(dest) as tmp:
        text = json.dumps(data, indent=indent) + "\n"
        tmp.write_text(text, encoding="utf-8")
        if json.loads(tmp.read_text(encoding="utf-8")) != json.loads(text):  # pragma: no cover - a failing disk
            raise OSError(f"{tmp} does not read back as written; {dest} was left unchanged")
    return dest


def _swap_lock(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lock"


def folder_ready(folder: str | os.PathLike) -> bool:
    """True when ``folder`` exists; if it is missing while :func:`atomic_path` swaps it, wait for the swap.

    Readers of folders that eelib replaces (unpacked data sets, trained models) call this
    instead of ``is_dir()``, so that a swap in another process never looks like a missing folder.
    """
    folder = Path(folder)
    if folder.is_dir():
        return True
    lock = _swap_lock(folder)
    if lock.exists():
        with FileLock(str(lock)):
            pass  # a swap held it: it is done now
    return folder.is_dir()


def _check_host_resolves(url: str, timeout: float) -> None:
    """Look the URL's host up with a time limit: name lookups ignore socket timeouts, and an
    offline machine can otherwise hang in them."""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return  # file:// and other local URLs
    result: list = []
    lookup = threading.Thread(target=lambda: result.append(_lookup(host)), daemon=True)
    lookup.start()
    lookup.join(timeout)
    if lookup.is_alive():
        raise DownloadError(f"could not download {url}: looking up {host} timed out after {timeout:g} s")
    if isinstance(result[0], OSError):
        raise DownloadError(f"could not download {url}: cannot resolve {host} ({result[0]})")


def _lookup(host: str):
    try:
        return socket.getaddrinfo(host, None)
    except OSError as err:
        return err


def download(url: str, dest: str | os.PathLike, *, checksum: str, algorithm: str = "md5",
             timeout: float = DEFAULT_TIMEOUT_S,
             progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download ``url`` to ``dest``: temporary file, checksum, then rename.

    A file already at ``dest`` with the right checksum is kept; one with the wrong checksum is
    replaced. Nothing is left at ``dest`` (or beside it) when the download fails.

    Args:
        url: where to fetch from (``https://``, ``http://`` or ``file://``).
        dest: the final path.
        checksum: expected hex digest of the file.
        algorithm: hash algorithm of ``checksum`` (default md5, as torchvision lists them).
        timeout: seconds to wait for the host name lookup, for the server to answer, and
            between two received chunks.
        progress: optional callback ``(bytes_so_far, total_bytes_or_None)``.

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: the server could not be reached or stalled, or the file's checksum
            does not match.
    """
    dest = Path(dest)
    if checksum_ok(dest, checksum, algorithm):
        return dest
    ensure_writable_dir(dest.parent)
    dest.unlink(missing_ok=True)  # a file with the wrong checksum is never used
    _check_host_resolves(url, timeout)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                done = 0
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise DownloadError(f"could not download {url}: {reason}") from err
        actual = file_digest(tmp, algorithm)
        if actual != checksum.lower():
            raise DownloadError(f"{url} downloaded, but its {algorithm} is {actual}, "
                                f"not {checksum.lower()}: the file was discarded")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
