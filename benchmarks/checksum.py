"""What checksumming a checkpoint costs: reading a file alone, CRC-32 (what nano records) and SHA-256.

    python benchmarks/checksum.py                               # 2 GiB in a temporary folder
    python benchmarks/checksum.py --size-gib 4 --folder /scratch/ckpt   # on the storage your checkpoints use

The default size is one rank's share of a nano_1b checkpoint with AdamW state on 8 GPUs (1.24B parameters
x 12 bytes / 8). "cold" drops the page cache first (needs root; otherwise every pass is "warm", i.e. the
file comes from memory, as right after a save).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import zlib
from pathlib import Path

from nano.checkpoint.integrity import CHUNK_BYTES, crc32_of


def read_only(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(CHUNK_BYTES):
            pass


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--folder", default=None, help="where to write the test file (default: a temporary folder)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="nano-checksum-"))
    path = folder / "checksum-probe.bin"
    block = os.urandom(64 * 2**20)
    with open(path, "wb") as f:
        for _ in range(max(1, round(args.size_gib * 16))):
            f.write(block)
    size = path.stat().st_size
    print(f"{size / 2**30:.1f} GiB file in {folder}; zlib {zlib.ZLIB_RUNTIME_VERSION}")
    try:
        for cache in ("cold", "warm"):
            for name, fn in (("read only", read_only), ("crc32", crc32_of), ("sha256", sha256_of)):
                if cache == "cold" and not drop_page_cache():
                    cache = "warm (cannot drop the page cache)"
                start = time.perf_counter()
                fn(path)
                seconds = time.perf_counter() - start
                print(f"{cache:>5}  {name:<9}  {seconds:6.2f} s  {size / seconds / 1e9:5.2f} GB/s")
    finally:
        path.unlink()


if __name__ == "__main__":
    main()
