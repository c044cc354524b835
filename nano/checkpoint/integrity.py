"""Each checkpoint file's size and CRC-32, recorded with the completion marker and checked before a resume.

The marker (`.complete`) holds `{"step": N, "run_id": ..., "files": {name: {"size": bytes, "crc32": hex}}}`
for every file of the step folder, so a resume can tell a truncated shard, a deleted `.metadata` or a
flipped bit from a good checkpoint before DCP reads it, and name the file.

Why CRC-32 rather than SHA-256: the threat is accident (a write cut short, a bit flipped on disk or in
transit, a file removed by hand), not an adversary. CRC-32 detects every single-bit error and every burst
of up to 32 bits, other damage with probability 1 - 2^-32, and the size check catches every truncation.
And it is cheaper: on a 2 GiB file (one rank's share of a nano_1b checkpoint with AdamW state on 8 GPUs),
on a 2-core machine, zlib's CRC-32 took 0.8-1.2 s against 1.7-1.8 s for SHA-256 (hashlib.file_digest)
while the file was still in the page cache, as right after a save, and 2.0-2.3 s against 2.5-2.6 s from
disk (reading alone: 1.1 s). Measure your storage with `python benchmarks/checksum.py`. Files are
checksummed in parallel threads (zlib and file reads release the GIL).
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ALGORITHM = "crc32"
CHUNK_BYTES = 2**20


def crc32_of(path: Path) -> str:
    """CRC-32 of a file as 8 hex digits, read in 1 MiB chunks into one reused buffer (small enough for the
    kernel's read-ahead to fetch the next while this one is summed)."""
    crc, buffer = 0, bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            crc = zlib.crc32(view[:size], crc)
    return f"{crc:08x}"


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def describe_files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {"size", "crc32"}} of the named files of `folder`, checksummed in parallel."""
    def one(name: str) -> tuple[str, dict[str, Any]]:
        path = folder / name
        return name, {"size": path.stat().st_size, ALGORITHM: crc32_of(path)}

    with ThreadPoolExecutor(_threads()) as pool:
        return dict(pool.map(one, sorted(names)))


def data_files(folder: Path, exclude: set[str]) -> list[str]:
    """Every regular file directly in `folder` except `exclude` (DCP writes a flat folder)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in exclude)


def read_manifest(marker: Path) -> dict[str, dict[str, Any]] | None:
    """The file list a completion marker records; None for a marker without one (written by an older nano)."""
    try:
        content = json.loads(marker.read_text())
    except (ValueError, OSError):
        return None
    files = content.get("files") if isinstance(content, dict) else None
    return files if isinstance(files, dict) else None


def check_files(folder: Path, manifest: dict[str, dict[str, Any]], names: list[str]) -> list[str]:
    """What is wrong with the named files of `folder` against the manifest, one line per bad file."""
    def one(name: str) -> str | None:
        expected, path = manifest[name], folder / name
        if not path.is_file():
            return f"{name}: missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name}: {size} bytes, {expected['size']} were written (truncated or replaced)"
        actual = crc32_of(path)
        if actual != expected[ALGORITHM]:
            return f"{name}: {ALGORITHM} {actual}, {expected[ALGORITHM]} was written (the content changed)"
        return None

    with ThreadPoolExecutor(_threads()) as pool:
        return [problem for problem in pool.map(one, sorted(names)) if problem]
