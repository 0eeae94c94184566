"""Several processes (`accelerate launch` / `torchrun`): one meaning of every config key whatever their number.

    torchrun --nproc_per_node 2 train_sft.py --config configs/tiny.yaml
    accelerate launch --config_file configs/accelerate/cpu.yaml train_sft.py --config configs/tiny.yaml

`batch_size` is global: the examples (SFT, per micro-batch) or prompts (GRPO) of one step summed over the k
processes, so k processes take the update one process takes. Each process trains on a contiguous share of the
batch one process would take, its losses are divided so that DDP's average over processes gives the mean over the
global batch (`loss_divisor`), and evaluation shards the examples and gathers the predictions in order. Only the
main process writes files; with one process every function here is the identity.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather, gather_object, reduce

from mathrl.errors import UserError

# Sampling seeds of different processes lie this far apart, so that process r of seed s never samples what
# process 0 of a nearby seed s' samples.
PROCESS_SEED_STRIDE = 100_003


def cpu_processes() -> bool:
    """Several processes on a machine without a GPU: accelerate then joins them only when told to run on CPU
    (gloo), and would otherwise run each as a separate single-process job. Not under a DeepSpeed launch: accelerate
    ignores DeepSpeed when told to run on CPU, and DeepSpeed joins the processes itself (gloo without a GPU)."""
    return several_processes_without_gpu() and not deepspeed_launch()


def several_processes_without_gpu() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def deepspeed_launch() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def state() -> PartialState:
    """accelerate's process state (created once; the Accelerator shares it). A DeepSpeed launch without a GPU names
    gloo: accelerate finds no backend of its own for it, and would then count one process of rank 0 on each."""
    if deepspeed_launch() and several_processes_without_gpu():
        return PartialState(backend="gloo")
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


def local_batches(items: list, batch_size: int) -> list[tuple[int, list]]:
    """This process's contiguous share of the batches of `batch_size` items one process would make, each with its
    index among them: a batch is the same on every process count (so can be its sampling seed)."""
    batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    first, end = shard_bounds(len(batches), process_index(), process_count())
    return [(index, batches[index]) for index in range(first, end)]


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


def summed_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each value summed over the processes (the values themselves with one process)."""
    if process_count() == 1:
        return values
    total = sum_over_processes(torch.tensor(list(values.values()), dtype=torch.float64, device=state().device))
    return dict(zip(values, total.tolist()))


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes (the values themselves with one process)."""
    k = process_count()
    return {name: value / k for name, value in summed_over_processes(values).items()}


def token_means_over_processes(means: dict[str, float], tokens: int) -> dict[str, float]:
    """Means over every process's tokens, from each process's means over its own `tokens` (weighted by them; the
    means themselves with one process). With no token anywhere, 0.0, as a token mean over none is here."""
    if process_count() == 1:
        return means
    summed = sum_over_processes(torch.tensor([*(value * tokens for value in means.values()), tokens],
                                             dtype=torch.float64, device=state().device)).tolist()
    return {name: value / max(summed[-1], 1.0) for name, value in zip(means, summed)}


def gather_in_order(items: list) -> list:
    """Every process's list, concatenated in process order (the list itself with one process)."""
    return gather_object(items) if process_count() > 1 else items


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on some process: decisions that end a loop (a signal, the time budget) must be the
    same on every process, or one would wait forever in a collective the others never reach."""
    if process_count() == 1:
        return flag
    return bool(sum_over_processes(torch.tensor(int(flag), device=state().device)))


def launch_prefix(script_argv: list[str]) -> list[str]:
    """How the user started this launch, up to the script (this process's sys.argv): ["python"] for one process;
    with several, the launcher's own command line (`torchrun --nproc_per_node 2`, `accelerate launch --config_file
    F`), read from the parent process (both start their workers themselves, with the script's argv verbatim).
    Where the parent is no such launcher (srun, mpirun) or its command line cannot be read (no /proc), the
    torchrun command for this machine's processes."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world == "1":
        return ["python"]
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")[:-1]
    except (OSError, UnicodeDecodeError):
        parent = []
    return launcher_in(parent, script_argv) or ["torchrun", "--nproc_per_node",
                                                os.environ.get("LOCAL_WORLD_SIZE", world)]


def launcher_in(parent_argv: list[str], script_argv: list[str]) -> list[str] | None:
    """The part of a launcher's command line before the script's argv, as typed: an interpreter shown as `python`,
    a console script on PATH (torchrun, accelerate) by its name; None if `script_argv` is not its tail."""
    tail = len(script_argv)
    if tail == 0 or len(parent_argv) <= tail or parent_argv[-tail:] != script_argv:
        return None
    launcher = parent_argv[:-tail]
    if Path(launcher[0]).name.startswith("python"):
        launcher = ["python", *launcher[1:]]
        if len(launcher) > 1 and not launcher[1].startswith("-"):  # `python /venv/bin/torchrun`: a console script
            name = Path(launcher[1]).name
            found = shutil.which(name)
            launcher = [name if found and Path(found).resolve() == Path(launcher[1]).resolve() else launcher[1],
                        *launcher[2:]]
    return launcher


def values_over_processes(value: int) -> list[int]:
    """Every process's integer `value`, in process order ([value] with one process)."""
    if process_count() == 1:
        return [value]
    return gather(torch.tensor([value], device=state().device)).tolist()


def wait_for_everyone() -> None:
    state().wait_for_everyone()
