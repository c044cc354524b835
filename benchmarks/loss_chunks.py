"""The output layer and its loss alone, forward and backward: F.cross_entropy on the full logits against
nano.loss with several chunk sizes, alternating in one run, with the page faults each call takes.

    python benchmarks/loss_chunks.py                       # the debug shape: 8 x 256 tokens, dim 256, vocab 8192
    OMP_NUM_THREADS=1 python benchmarks/loss_chunks.py --clock cpu
    python benchmarks/loss_chunks.py --tokens 16384 --dim 2048 --vocab 32064 --chunks 512,1024,2048   # nano_1b, GPU

On a CPU, a tensor of 32 MiB or more is a fresh mmap from the allocator every time, page-faulted on first
touch; smaller ones reuse freed memory. The minor-fault count shows which side of that line a size is on.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from nano.loss import linear_cross_entropy

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8 * 256, help="tokens per micro-batch")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--chunks", default="256,512,1024,2048", help="chunk sizes in tokens")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    opts = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda"
    torch.manual_seed(0)
    head = nn.Linear(opts.dim, opts.vocab, bias=False, device=device)
    hidden = torch.randn(1, opts.tokens, opts.dim, device=device, requires_grad=True)
    labels = torch.randint(0, opts.vocab, (1, opts.tokens), device=device)

    def full_logits() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = head(hidden)
        F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten()).backward()

    def chunked(tokens: int):
        def run() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = linear_cross_entropy(hidden, head, labels, chunk_tokens=tokens)
            loss.backward()
        return run

    variants = {"full logits": full_logits} | {f"chunk {c}": chunked(int(c)) for c in opts.chunks.split(",")}
    times: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[int]] = {name: [] for name in variants}
    for run in variants.values():
        run()
    clock = CLOCKS[opts.clock]
    for index in range(opts.rounds):
        names = list(variants)
        for name in names[index % len(names):] + names[:index % len(names)]:
            hidden.grad = head.weight.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize()
            before, start = minor_faults(), clock()
            variants[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(1000 * (clock() - start))
            faults[name].append(minor_faults() - before)
    print(f"{opts.tokens} tokens x dim {opts.dim} -> vocab {opts.vocab}, {'bf16' if bf16 else 'fp32'}, {device.type}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {opts.rounds} alternating rounds, "
          f"{opts.clock} clock, forward + backward")
    print(f"{'':>12}  {'best ms':>8}  {'median ms':>9}  {'minor faults':>12}")
    for name in variants:
        print(f"{name:>12}  {min(times[name]):>8.1f}  {statistics.median(times[name]):>9.1f}  "
              f"{statistics.median(faults[name]):>12,.0f}")


if __name__ == "__main__":
    main()
