"""Shared plumbing of the benchmarks: thread pinning, timers, summaries, environment facts, JSON output.

Imported first by bench_grpo.py and bench_sft.py: it pins OMP/MKL to the requested thread count before torch is
imported and puts the repository root on sys.path, so the benchmarks import the repo's own modules.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "bench" / "out"


def pin_threads(argv: list[str]) -> int:
    """Read --threads N from argv (default 1) and pin every thread pool to it; call before importing torch."""
    threads = 1
    for i, token in enumerate(argv):
        if token == "--threads" and i + 1 < len(argv):
            threads = int(argv[i + 1])
        elif token.startswith("--threads="):
            threads = int(token.split("=", 1)[1])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    os.chdir(REPO_ROOT)  # the configs name data files relative to the repository root
    return threads


MODEL_HELP = ("tiny: the built-in tiny model; or any model_name: builtin:NAME (e.g. builtin:smollm2-135m-instruct) "
              "or a Hugging Face model directory. Data and prompt format stay configs/tiny.yaml's")


def model_name_of(model: str) -> str:
    """The model_name a --model value stands for ("tiny" is the built-in tiny model)."""
    return "builtin:tiny" if model == "tiny" else model


def model_label(model: str) -> str:
    """A file-name-safe short name of a --model value: "tiny", "smollm2-135m-instruct", a directory's name."""
    return Path(model.removeprefix("builtin:")).name or "model"


def parse_bench_args(parser, default_steps: int, default_out: str):
    """Add the options both benchmarks take (--steps, --warmup, --threads, --seed, --no_trl, --out) and parse."""
    parser.add_argument("--steps", type=int, default=default_steps, help="timed steps per side (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no_trl", action="store_true", help="time our step only")
    parser.add_argument("--out", default=None, help=f"JSON file (default {default_out})")
    args = parser.parse_args()
    if args.steps < 5:
        parser.error("--steps must be >= 5")
    return args


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def sync(device) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it (a no-op on CPU)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def timed(timer, name, fn, classify=None):
    """fn, its wall time added to `timer` (a mathrl.timing.PhaseTimer) under `name` (or classify(*args, **kwargs)).

    For TRL's side only: our trainer records its own phases."""
    def wrapper(*args, **kwargs):
        with timer.phase(classify(*args, **kwargs) if classify else name):
            return fn(*args, **kwargs)
    return wrapper


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "n": len(values), "all": values}


def phase_medians(steps: list[dict[str, float]], total: float) -> dict:
    """Median seconds of each phase over the steps, and its share of the median step time."""
    names = sorted({name for step in steps for name in step})
    out = {}
    for name in names:
        median = statistics.median(step.get(name, 0.0) for step in steps)
        out[name] = {"median_s": median, "share": median / total if total else 0.0}
    return out


def environment(threads: int, device) -> dict:
    import torch
    import transformers

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    try:
        import accelerate
        accelerate_version = accelerate.__version__
    except ImportError:
        accelerate_version = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate_version, "trl": trl_version, "cpu": cpu, "cpu_count": os.cpu_count(),
        "threads": threads, "torch_num_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "device": str(device),
    }
    if getattr(device, "type", None) == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other jobs on the machine show up here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
