"""Time one step of builtin:tiny-base's pretraining loop, plain and with the speed-ups a reader might try.

    python bench/pretraining_step_time.py                 # every variant, at PRETRAINING's thread count (2)
    python bench/pretraining_step_time.py --variants plain --profile

The measurements behind README's pretraining budget: for each variant it runs --warmup steps, then times --steps
steps of `tiny_base.pretraining_step` on the corpus's length-pooled batches (the same model shape, batch size,
optimizer settings and thread count as the real build) and prints milliseconds per step. Variants:
- plain: the loop as the repo runs it;
- bf16: the forward under torch.autocast("cpu", bfloat16);
- fused_adamw: AdamW(fused=True);
- compile: torch.compile(model, dynamic=True) (needs a C++ compiler; its compile time is in the warm-up steps).
--profile also prints the share of a plain step spent in matrix products (aten::mm) and their throughput.
Run it with nothing else on the machine: the other runs' threads change the timing.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from mathrl import tiny_base  # noqa: E402
from mathrl.config import resolve_config  # noqa: E402
from mathrl.modeling import _build_tiny  # noqa: E402

VARIANTS = ("plain", "bf16", "fused_adamw", "compile")


def time_variant(variant: str, settings: dict, warmup: int, steps: int) -> tuple[float, float]:
    """(ms per step, last loss) of `steps` pretraining steps after `warmup`, from a fresh model."""
    config = resolve_config("sft", str(REPO_ROOT / "configs" / "tiny.yaml"), [])
    model, tokenizer = _build_tiny({**config, "seed": settings["init_seed"], "max_prompt_length": 0,
                                    "max_completion_length": 0})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"],
                                  weight_decay=settings["weight_decay"], betas=tuple(settings["adam_betas"]),
                                  fused=variant == "fused_adamw" or None)
    stepped = torch.compile(model, dynamic=True) if variant == "compile" else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16" else contextlib.nullcontext()
    batches = tiny_base.document_batches(tiny_base.pretraining_corpus(settings), settings["batch_size"],
                                         settings["length_pool"], random.Random("bench"))

    def step():
        with autocast:
            return tiny_base.pretraining_step(stepped, tokenizer, next(batches), optimizer, settings["max_grad_norm"])

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    return (time.perf_counter() - start) / steps * 1000, loss.item()


def matmul_share(settings: dict, steps: int) -> None:
    """Print aten::mm's share of a plain step's CPU time and its FLOP rate."""
    from torch.profiler import profile

    with profile(with_flops=True) as prof:
        time_variant("plain", settings, 0, steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = next(e for e in events if e.key == "aten::mm")
    print(f"aten::mm: {mm.self_cpu_time_total / total:.0%} of CPU time, "
          f"{mm.flops / (mm.self_cpu_time_total * 1e-6) / 1e9:.0f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")

    settings = tiny_base.PRETRAINING
    torch.set_num_threads(settings["threads"])
    print(f"{settings['batch_size']} documents per step, {settings['threads']} threads, torch {torch.__version__}")
    for variant in variants:
        ms, loss = time_variant(variant, settings, args.warmup, args.steps)
        print(f"{variant:12s} {ms:6.1f} ms per step  ({settings['steps']} steps: {ms * settings['steps'] / 60000:.1f}"
              f" min; last loss {loss:.3f})")
    if args.profile:
        matmul_share(settings, 50)


if __name__ == "__main__":
    main()
