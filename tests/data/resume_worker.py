"""torchrun worker: each rank's loader, shuffling, resumes exactly through a real DCP checkpoint, twice; ranks are
disjoint."""

import os
import sys
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist

from nano.checkpoint.manager import CheckpointManager, PerRankState
from nano.config import Checkpoint, load_config
from nano.data.loader import build_dataloader
from nano.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]


def make_loader(workers: int, rank: int, world: int):
    argv = ["--config", str(REPO / "train_configs/debug_model.toml"), "--data.num_workers", str(workers),
            "--data.shuffle_buffer", "200"]  # several blocks per epoch of each demo file
    cfg = load_config(argv).data
    tok = Tokenizer(REPO / cfg.tokenizer)
    return build_dataloader(cfg, tok, seq_len=64, micro_batch_size=2, dp_rank=rank, dp_world_size=world, seed=3)


def manager(folder: Path, dl, rank: int, world: int) -> CheckpointManager:
    return CheckpointManager(Checkpoint(interval=1, keep_latest_k=0), folder, {"dataloader": PerRankState(dl, rank)},
                             layout={"dp_world_size": world}, is_rank0=rank == 0)


def assert_same(got: list[torch.Tensor], expected: list[torch.Tensor], what: str) -> None:
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), f"{what} diverged"


def main(folder: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for workers in (0, 2):
        root = folder / f"workers{workers}"
        reference = make_loader(workers, rank, world)
        it = iter(reference)
        list(islice(it, 4))
        manager(root, reference, rank, world).save(4)
        expected = [b["input"] for b in islice(it, 6)]

        # Ranks read disjoint rows, so no window of one rank is served to the other.
        mine = torch.cat(expected)
        gathered = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        windows = [{tuple(w.tolist()) for w in rank_windows} for rank_windows in gathered]
        assert not windows[0] & windows[1], "the ranks served a window in common"

        resumed = make_loader(workers, rank, world)
        resumed_manager = manager(root, resumed, rank, world)
        assert resumed_manager.load_latest() == 4
        resumed_manager.save(5)  # saved again before iterating: the double-resume case
        assert_same([b["input"] for b in islice(iter(resumed), 6)], expected, f"rank {rank}: first resume")

        again = make_loader(workers, rank, world)
        assert manager(root, again, rank, world).load_latest() == 5
        assert_same([b["input"] for b in islice(iter(again), 6)], expected, f"rank {rank}: second resume")
    print(f"rank {rank}: resume exact", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.stdout.flush()
    os._exit(0)
