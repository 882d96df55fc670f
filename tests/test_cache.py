import hashlib
import json
import time

import pytest

from eelib._util import cache


def test_download_verifies_and_renames(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    seen = []
    dest = cache.download(src.as_uri(), tmp_path / "out" / "file.bin", checksum=md5,
                          progress=lambda done, total: seen.append(done))
    assert dest.read_bytes() == src.read_bytes() and seen[-1] == 5000
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]
    # a second call keeps the verified file without downloading
    src.unlink()
    assert cache.download(src.as_uri(), dest, checksum=md5) == dest


def test_an_existing_file_with_the_wrong_checksum_is_replaced(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"the real content")
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"stale or corrupted")
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    assert cache.download(src.as_uri(), dest, checksum=md5).read_bytes() == b"the real content"
    dest.write_bytes(b"corrupted again")
    with pytest.raises(cache.DownloadError):  # offline: refused, and the bad file is not kept
        cache.download((tmp_path / "gone").as_uri(), dest, checksum=md5)
    assert not dest.exists()


def test_unwritable_destination(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        cache.download("file:///dev/null", blocker / "sub" / "f", checksum="0" * 32)


def test_sha256_and_failure_messages(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    sha = hashlib.sha256(b"abc").hexdigest()
    assert cache.download(src.as_uri(), tmp_path / "a", checksum=sha, algorithm="sha256").is_file()
    with pytest.raises(cache.DownloadError, match="could not download"):
        cache.download((tmp_path / "missing").as_uri(), tmp_path / "b", checksum=sha)
    assert not (tmp_path / "b").exists()


def test_atomic_path_removes_partial_work(tmp_path):
    dest = tmp_path / "model.bin"
    with pytest.raises(RuntimeError):
        with cache.atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with cache.atomic_path(dest) as tmp:
        tmp.write_text("whole")
    assert dest.read_text() == "whole" and list(tmp_path.iterdir()) == [dest]


def test_cache_folders_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EELIB_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("EELIB_DATA", raising=False)
    assert cache.data_dir() == tmp_path / "c" / "data" and cache.models_dir() == tmp_path / "c" / "models"
    monkeypatch.setenv("EELIB_DATA", str(tmp_path / "d"))
    assert cache.data_dir() == tmp_path / "d"


def test_a_hanging_name_lookup_times_out(tmp_path, monkeypatch):
    import threading
    import time

    release = threading.Event()
    monkeypatch.setattr(cache, "_lookup", lambda host: release.wait(30))  # a resolver that hangs
    start = time.perf_counter()
    try:
        with pytest.raises(cache.DownloadError, match="looking up example.invalid timed out"):
            cache.download("https://example.invalid/file", tmp_path / "f", checksum="0" * 32, timeout=0.3)
    finally:
        release.set()
    assert time.perf_counter() - start < 5
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_host_is_a_download_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "_lookup", lambda host: OSError("Name or service not known"))
    with pytest.raises(cache.DownloadError, match="cannot resolve"):
        cache.download("https://example.invalid/file", tmp_path / "f", checksum="0" * 32)


_SWAP = """
import sys, time
from pathlib import Path
from eelib._util.cache import atomic_path
dest, tag, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(dest.parent / f"ready-{tag}").touch()  # imported: wait for the reader's go, so both writers swap at once
deadline = time.monotonic() + 120
while not (dest.parent / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no go from the reader within 120 s")
    time.sleep(0.01)
for i in range(rounds):
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text(f"{tag}{i}")
        time.sleep(0.005)
        (tmp / "b.txt").write_text(f"{tag}{i}")  # a complete folder has both files, from the same writer and round
"""


def test_two_processes_replace_a_folder_and_a_reader_never_sees_it_missing(tmp_path):
    import subprocess
    import sys

    from eelib._util.cache import atomic_path, folder_ready

    dest = tmp_path / "model"
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("first")
        (tmp / "b.txt").write_text("first")
    writers = [subprocess.Popen([sys.executable, "-c", _SWAP, str(dest), tag, "25"]) for tag in ("x", "y")]
    seen, missing = set(), 0
    try:
        # the reader spins only while the writers swap, not while they import (a core's worth of CPU)
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready-{tag}").exists() for tag in ("x", "y")):
            assert all(w.poll() is None for w in writers), "a writer failed before swapping"
            assert time.monotonic() < deadline, "the writers were not ready within 120 s"
            time.sleep(0.05)
        (tmp_path / "go").touch()
        while any(w.poll() is None for w in writers):
            if not folder_ready(dest):
                missing += 1
                continue
            try:
                a, b = (dest / "a.txt").read_text(), (dest / "b.txt").read_text()
            except FileNotFoundError:  # the folder was swapped between the check and the read: a new one is there
                assert folder_ready(dest)
                continue
            seen.update((a, b))  # (two reads may straddle a swap: each file is whole, from some complete folder)
    finally:  # no writer outlives the test
        for w in writers:
            if w.poll() is None:
                w.kill()
            w.wait()
    assert [w.returncode for w in writers] == [0, 0]  # both writers succeeded
    assert missing == 0
    assert all(v == "first" or (v[0] in "xy" and 0 <= int(v[1:]) < 25) for v in seen) and len(seen) > 1
    assert (dest / "a.txt").read_text() in {"x24", "y24"}
    assert (dest / "a.txt").read_text() == (dest / "b.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "go", "model", "ready-x", "ready-y"]  # nothing else beside it


def test_save_json_writes_atomically_and_leaves_nothing_beside(tmp_path):
    from eelib._util.cache import save_json

    dest = tmp_path / "results" / "r.json"
    assert save_json({"a": 1.5, "b": [1, 2]}, dest) == dest
    assert json.loads(dest.read_text(encoding="utf-8")) == {"a": 1.5, "b": [1, 2]}
    with pytest.raises(TypeError):
        save_json({"bad": object()}, dest)  # not JSON: the old file stays as it was
    assert json.loads(dest.read_text(encoding="utf-8")) == {"a": 1.5, "b": [1, 2]}
    assert [p.name for p in dest.parent.iterdir()] == ["r.json"]


def test_a_file_never_replaces_a_folder(tmp_path):
    """Issue 26: save_json (the benchmarks' --out) given a folder deleted it and all its files, and left
    a .lock file; now the folder is refused, left as it was, and nothing is written beside it."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "keep.txt").write_text("keep")
    with pytest.raises(IsADirectoryError, match="is a folder: a file cannot replace it.*results.json"):
        cache.save_json({"a": 1}, results)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        with cache.atomic_path(results) as tmp:
            tmp.write_text("a file")
    assert (results / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no lock file, no temporary left
    (tmp_path / "a.txt").write_text("a file")
    with pytest.raises(NotADirectoryError, match="is a file: a folder was written"):
        with cache.atomic_path(tmp_path / "a.txt") as tmp:
            tmp.mkdir()
    assert (tmp_path / "a.txt").read_text() == "a file"
    with cache.atomic_path(results) as tmp:  # a folder still replaces a folder
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in results.iterdir()) == ["new.txt"]
