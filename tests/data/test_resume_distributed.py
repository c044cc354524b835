from pathlib import Path

from tests.distributed import run_torchrun

WORKER = Path(__file__).with_name("resume_worker.py")


def test_two_ranks_resume_exactly_through_dcp_twice(tmp_path: Path) -> None:
    proc = run_torchrun(WORKER, str(tmp_path), nproc=2, timeout=600)
    assert "rank 0: resume exact" in proc.stdout and "rank 1: resume exact" in proc.stdout
