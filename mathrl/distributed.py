"""Several processes (`accelerate launch` / `torchrun`): one meaning of every config key whatever their number.

    torchrun --nproc_per_node 2 train_sft.py --config configs/tiny.yaml
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml train_sft.py --config configs/tiny.yaml

`batch_size` is global: the examples (SFT, per micro-batch) or prompts (GRPO) of one step summed over the k
processes, so k processes take the update one process takes. Each process trains on a contiguous share of the
batch one process would take, its losses are divided so that DDP's average over processes gives the mean over the
global batch (`loss_divisor`), and evaluation shards the examples and gathers the predictions in order. Only the
main process writes files; with one process every function here is the identity.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState
from accelerate.utils import gather, gather_object, reduce

from mathrl.errors import UserError

# Sampling seeds of different processes lie this far apart, so that process r of seed s never samples what
# process 0 of a nearby seed s' samples.
PROCESS_SEED_STRIDE = 100_003


def cpu_processes() -> bool:
    """Several processes on a machine without a GPU: accelerate then joins them only when told to run on CPU
    (gloo), and would otherwise run each as a separate single-process job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def state() -> PartialState:
    """accelerate's process state (created once; the Accelerator shares it)."""
    return PartialState(cpu=cpu_processes())


def process_count() -> int:
    return state().num_processes


def process_index() -> int:
    return state().process_index


def is_main_process() -> bool:
    return state().is_main_process


def process_seed(seed: int, rank: int) -> int:
    """The sampling seed of process `rank`: the config's seed on process 0 (one process is unchanged), distinct
    streams on the others (GRPO's k processes must not sample the same completions)."""
    return seed + PROCESS_SEED_STRIDE * rank


def shard_bounds(n: int, rank: int, num_processes: int) -> tuple[int, int]:
    """[start, end) of process `rank`'s contiguous share of n items; the first n % k processes take one more."""
    base, extra = divmod(n, num_processes)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def local_share(items: list, what: str) -> list:
    """This process's contiguous share of a global batch that the processes split evenly (an error otherwise:
    uneven shares would weigh the processes' examples differently)."""
    k = process_count()
    if len(items) % k:
        raise UserError(f"{what} {len(items)} is not divisible by the {k} processes; batch_size is global "
                        f"(summed over processes): pass a multiple of {k}")
    start, end = shard_bounds(len(items), process_index(), k)
    return items[start:end]


def local_rows(batch: dict[str, torch.Tensor], device, rank: int | None = None) -> dict[str, torch.Tensor] | None:
    """Process `rank`'s (default: this process's) contiguous rows of a global batch of [B, ...] tensors, on `device`;
    None when it has none (B < k). Shares may differ by one row: the loss divisor counts tokens, not rows."""
    rows = next(iter(batch.values())).shape[0]
    start, end = shard_bounds(rows, process_index() if rank is None else rank, process_count())
    if start == end:
        return None
    return {name: tensor[start:end].to(device) for name, tensor in batch.items()}


def loss_divisor(global_tokens: int | float, num_processes: int) -> float:
    """What each process divides its summed token losses by, so that the update is the mean over every token of
    the global batch and its accumulation window.

    DDP averages gradients over the k processes and gradients of the micro-batches of a window add up, so with
    s_rm the summed token loss of micro-batch m on process r and N = sum of their token counts:
        1/k * sum_r sum_m s_rm / (N / k) = sum_rm s_rm / N.
    (A token mean per micro-batch, divided by the window length, weighs micro-batches with few tokens more.)"""
    return max(float(global_tokens), 1.0) / num_processes


def sum_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `value` over all processes (itself with one process)."""
    return reduce(value, reduction="sum") if process_count() > 1 else value


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's tensor concatenated along dim 0 in process order (the tensor itself with one process)."""
    return gather(tensor) if process_count() > 1 else tensor


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes (the values themselves with one process)."""
    k = process_count()
    if k == 1:
        return values
    total = sum_over_processes(torch.tensor(list(values.values()), dtype=torch.float64, device=state().device))
    return {name: float(v) / k for name, v in zip(values, total.tolist())}


def gather_in_order(items: list) -> list:
    """Every process's list, concatenated in process order (the list itself with one process)."""
    return gather_object(items) if process_count() > 1 else items


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on some process: decisions that end a loop (a signal, the time budget) must be the
    same on every process, or one would wait forever in a collective the others never reach."""
    if process_count() == 1:
        return flag
    return bool(sum_over_processes(torch.tensor(int(flag), device=state().device)))


def wait_for_everyone() -> None:
    state().wait_for_everyone()
