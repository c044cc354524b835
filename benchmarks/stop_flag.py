"""Per-step costs of nano.guards: agreeing on a stop signal, and reading loss and grad norm for the bad-step check.

    torchrun --standalone --nproc_per_node=2 benchmarks/stop_flag.py           # CPU ranks (gloo)
    torchrun --standalone --nproc_per_node=8 benchmarks/stop_flag.py --cuda    # one node of GPUs

Prints the median time of `Guards.should_stop()` (one all-reduce of one integer over a gloo group: it never
waits for the device) and of `global_loss_and_norm` (an all-reduce of the loss and ONE device-to-host
read of loss and norm), each per call, over many calls. On GPUs the second also shows what reading the
values back costs when the device is busy: it is timed right after a queued matmul, so it includes
waiting for the device (what a step that skips nothing would do anyway before the optimizer step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

from nano.config import Comm, Training
from nano.guards import Guards, global_loss_and_norm


def median_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if args.cuda else torch.device("cpu")
    if args.cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if args.cuda else "gloo")
    guards = Guards(Training(), Comm(), mesh=None)
    stop_us = median_us(guards.should_stop, args.calls)
    loss, norm = torch.tensor(2.5, device=device), torch.tensor(1.0, device=device)
    read_us = median_us(lambda: global_loss_and_norm(loss, norm), args.calls)
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} ranks, {device.type}: stop-flag agreement {stop_us:.0f} us per step, "
              f"loss + grad norm to the host {read_us:.0f} us per step (idle device)")
    if args.cuda:
        a = torch.randn(8192, 8192, device=device)
        busy = median_us(lambda: (a @ a, global_loss_and_norm(loss, norm)), 50)
        alone = median_us(lambda: (a @ a, torch.cuda.synchronize()), 50)
        if dist.get_rank() == 0:
            print(f"after a queued 8192^3 matmul: read {busy:.0f} us vs synchronize {alone:.0f} us")
    guards.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
