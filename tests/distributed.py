"""One helper to launch real multi-process (gloo, CPU) tests through torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(
    script: str | Path, *args: str, nproc: int = 2, timeout: float = 300.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `script` under torchrun on `nproc` CPU ranks; fail the test with both logs if it exits non-zero.

    Worker scripts must end with `dist.barrier(); dist.destroy_process_group(); os._exit(0)`: gloo with a
    device mesh sometimes aborts at interpreter exit otherwise.
    """
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(script), *args,
    ]
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise AssertionError(
            f"torchrun {script} {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc
