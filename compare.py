"""The experiment: one command that fills the paper's results table (sections 5-6): SFT vs GRPO vs SFT -> GRPO.

    python compare.py --config configs/tiny.yaml --output_dir results/tiny   # built-in tiny model, CPU
    python compare.py --config configs/tiny.yaml --force                     # redo every run (old ones kept)
    python compare.py --config configs/tiny.yaml --force grpo                # redo one run (and runs built on it)
    python compare.py                                                         # TinyLlama-1.1B-Chat (GPU)

Runs, one after another and each a subprocess of the repo's own scripts (no run shares a process, memory peak or
timer with another), under OUTPUT_DIR (the `compare:` section of config.yaml holds every setting; mathrl/runs.py
is the list that planning, evaluation and the report loop over):
  base       the model as it is, untrained (evaluated only)
  sft        train_sft.py from the base model; also saves step_N/ every warm_start_steps steps
  grpo       train_grpo.py from the base model. A from-scratch tiny model almost never answers right, so every
             completion of a group gets the same reward, the advantages are 0 and it stays near 0: the report
             says so
  sft_grpo   train_grpo.py --init_from OUTPUT_DIR/sft/final: the two-stage SFT -> GRPO recipe
  h2h_sft, h2h_grpo   both from the shared warm start OUTPUT_DIR/sft/step_<warm_start_steps>: more SFT vs GRPO for
             the same training time (head_to_head_seconds), to see which buys more accuracy per second
  grpo_length  only when grpo_length_reward_weight > 0 (configs/smollm2.yaml): train_grpo.py from the base model
             with that length_reward_weight, the two-stage recipe's length term
Then evaluate.py decodes every checkpoint greedily (the headline) and samples diversity_samples completions per
prompt, and OUTPUT_DIR/REPORT.md, results.json, samples.md and *.png are written (mathrl/report.py). Each run's
console output is in OUTPUT_DIR/NAME/train.log.

Reuse: a run whose final/ exists is kept. A run interrupted after saving a step_N/ (train_sft.py and
train_grpo.py save one on SIGINT / SIGTERM) is resumed from it (--resume_from auto); a run directory with
neither (interrupted before any save) is moved aside to NAME.old-<timestamp> and redone. So running the same
command again finishes an interrupted compare.
`--force [NAME ...]` moves those runs (every run, without names) aside the same way and redoes them; a run built
on a redone run is redone too. Nothing is deleted. A kept run whose saved config differs from what this command
would run is an error, so a report never mixes settings. Evaluations are kept beside each checkpoint
(eval-*.json) and redone when the evaluation settings change.

How this departs from the paper:
- The paper reports one accuracy and a training time per method. Here every accuracy comes with its binomial
  standard error and each claim of sections 5-6 is checked against the numbers: a difference within 2 standard
  errors is reported as "inconclusive". The out-of-distribution set, answer diversity and the equal-compute
  head-to-head measure what the paper only discusses.
- Training time is the time spent in training steps (evaluation and checkpoint saving excluded), so how often a
  run evaluates does not change its measured cost.
- The head-to-head continuations start a fresh optimizer, schedule and data order at the warm start; their step
  cap (head_to_head_max_steps) is large, so the cosine schedule stays near its peak and the time budget ends them.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mathrl.config import DEFAULT_CONFIG_PATH, for_checkpoint, load_saved_config, parse_args, read_yaml, resolve_config
from mathrl.data import load_jsonl, read_jsonl
from mathrl.distributed import process_count
from mathrl.errors import UserError, run_cli
from mathrl.resume import complete_steps
from mathrl.report import write_report
from mathrl.runs import BY_NAME, GRPO_SCRIPT, SFT_SCRIPT, RunSpec, planned

REPO_ROOT = Path(__file__).resolve().parent
# Not compared on reuse: OUTPUT_DIR may have been moved; a tracker changes where metrics go, not what they are.
NOT_COMPARED = ("output_dir", "init_from", "report_to")


@dataclass
class Run:
    """One run to train (or, for the base model, only to evaluate), planned from its mathrl.runs entry."""
    name: str
    script: str | None                # None: nothing to train (the base model)
    section: str                      # the script's config section
    overrides: list[str]              # this run's command-line overrides
    upstream: str | None = None       # the run whose checkpoint it starts from
    init_from: Path | None = None


@dataclass
class Target:
    """One checkpoint to evaluate and report."""
    name: str
    ckpt: str
    eval_path: Path                   # its evaluation (JSON) and, beside it, its predictions
    offset_s: float = 0.0             # training time spent before this run started (its upstream's)


def cli_value(value) -> str:
    """A command-line override value that mathrl.config reads back as exactly `value`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def checkpoint_path(name: str, config: dict, out: Path) -> Path:
    """Where a registry entry's checkpoint is: the warm start is a step_N/ of the SFT run, any other run its final/."""
    if name == "warm_start":
        return out / "sft" / f"step_{config['warm_start_steps']}"
    return out / name / "final"


def producer(name: str) -> str:
    """The run that trains an entry's checkpoint: itself, or for a checkpoint of another run (the warm start), that
    run."""
    spec = BY_NAME[name]
    return spec.starts_from if spec.script is None and spec.starts_from else name


def run_overrides(spec: RunSpec, config: dict) -> list[str]:
    if spec.name == "sft":  # its step_N/ checkpoints include the warm start
        return ["--save_every", cli_value(config["warm_start_steps"])]
    if spec.starts_from == "warm_start":  # the head-to-head: a time budget, and a step cap that it should not reach
        cap = "--max_steps" if spec.script == SFT_SCRIPT else "--num_train_steps"
        return ["--max_train_seconds", cli_value(config["head_to_head_seconds"]), "--save_every", "0",
                cap, cli_value(config["head_to_head_max_steps"])]
    if spec.name == "grpo_length":
        return ["--length_reward_weight", cli_value(config["grpo_length_reward_weight"])]
    return []


def plan_runs(config: dict, out: Path) -> list[Run]:
    """Every entry of mathrl.runs that is trained (and the base model, evaluated only), in table order."""
    runs = []
    for spec in planned(config):
        if spec.script is None and spec.starts_from:
            continue  # a checkpoint of another run
        section = {None: "evaluate", SFT_SCRIPT: "sft", GRPO_SCRIPT: "grpo"}[spec.script]
        upstream = producer(spec.starts_from) if spec.starts_from else None
        init_from = checkpoint_path(spec.starts_from, config, out) if spec.starts_from else None
        runs.append(Run(spec.name, spec.script, section, run_overrides(spec, config), upstream, init_from))
    return runs


def forwarded_overrides(config_file: str | None, config: dict) -> list[str]:
    """Shared keys given on compare's command line (e.g. --seed 1), passed on to every script it runs."""
    own = set(read_yaml(DEFAULT_CONFIG_PATH)["compare"])
    file_only = resolve_config("compare", config_file)
    changed = [k for k in config if k not in own and config[k] != file_only[k]]
    return [t for k in changed for t in (f"--{k}", cli_value(config[k]))]


def run_args(run: Run, out: Path, common: list[str]) -> list[str]:
    init = ["--init_from", cli_value(run.init_from)] if run.init_from else []
    return [*common, "--output_dir", cli_value(out / run.name), *init, *run.overrides]


def sft_total_steps(sft: dict) -> int:
    if sft["max_steps"] > 0:
        return sft["max_steps"]
    batches = math.ceil(len(load_jsonl(sft["train_file"])) / sft["batch_size"])
    return sft["num_epochs"] * math.ceil(batches / sft["gradient_accumulation_steps"])


def move_aside(path: Path) -> Path:
    """Rename an earlier run to NAME.old-<timestamp>; never delete it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.name}.old-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
    path.rename(target)
    print(f"moved {path} aside to {target}")
    return target


def changed_settings(run: Run, out: Path, common: list[str], config_file: str | None) -> list[str]:
    """Config keys whose value in the run's saved config differs from what this command would use now."""
    expected = resolve_config(run.section, config_file, run_args(run, out, common))
    expected = for_checkpoint(expected, str(run.init_from or expected["init_from"] or expected["model_name"]))
    saved = load_saved_config(out / run.name / "final")
    return sorted(k for k in set(expected) | set(saved)
                  if k not in NOT_COMPARED and expected.get(k, "<missing>") != saved.get(k, "<missing>"))


def script_command(script: str, config_file: str | None, overrides: list[str], launcher: str = "") -> list[str]:
    """How a script is started: with this Python, or with `launcher` (e.g. torchrun: k processes per run)."""
    start = shlex.split(launcher) if launcher else [sys.executable]
    return [*start, str(REPO_ROOT / script), *(["--config", config_file] if config_file else []), *overrides]


def train(run: Run, out: Path, common: list[str], config_file: str | None, launcher: str,
          resume: bool = False) -> None:
    run_dir = out / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    command = script_command(run.script, config_file,
                             [*run_args(run, out, common), *(["--resume_from", "auto"] if resume else [])], launcher)
    log = run_dir / "train.log"
    print(f"{'resuming' if resume else 'training'} {run.name}: {run.script} (log: {log})", flush=True)
    with log.open("a") as f:
        f.write(f"$ {shlex.join(command)}\n")
        f.flush()
        returncode = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        raise UserError(f"{run.name}: {run.script} failed (exit status {returncode}); end of {log}:\n{tail}")


def load_evaluation(eval_path: Path) -> list[dict]:
    """A stored evaluation: one result per eval file, each with its predictions (read from beside it)."""
    results = json.loads(eval_path.read_text())["results"]
    predictions = read_jsonl(eval_path.with_suffix(".predictions.jsonl"))
    return [{**r, "predictions": [p for p in predictions if p["eval_file"] == r["eval_file"]]} for r in results]


def evaluate(targets: list[Target], out: Path, common: list[str], config: dict,
             config_file: str | None) -> dict[str, list[dict]]:
    """Evaluate every target whose saved evaluation is missing or made with other settings, in one call; store
    each beside its checkpoint (reused next time). Returns every target's results, predictions included."""
    eval_files = [f for f in (config["eval_file"], config["ood_eval_file"]) if f]
    settings = {"eval_files": eval_files, "samples": config["diversity_samples"],
                "temperature": config["diversity_temperature"], "top_p": config["diversity_top_p"],
                "config": {k: v for k, v in resolve_config("evaluate", config_file, common).items()
                           if k not in NOT_COMPARED}}
    stale = [t for t in targets if not t.eval_path.is_file()
             or json.loads(t.eval_path.read_text()).get("settings") != {**settings, "ckpt": t.ckpt}]
    evaluations = {t.name: load_evaluation(t.eval_path) for t in targets if t not in stale}
    if not stale:
        print("every evaluation is up to date")
        return evaluations
    pending = out / "evaluate-pending.json"
    sampling = ["--samples", str(settings["samples"]), "--temperature", str(settings["temperature"]),
                "--top_p", str(settings["top_p"])] if settings["samples"] else []
    command = script_command("evaluate.py", config_file, [
        *common, *[a for t in stale for a in ("--ckpt", t.ckpt)], *[a for f in eval_files for a in ("--eval_file", f)],
        *sampling, "--output", cli_value(pending), "--overwrite"],  # pending: this command's own scratch file
        config["launcher"])
    log = out / "evaluate.log"
    print(f"evaluating {', '.join(t.name for t in stale)} (log: {log})", flush=True)
    with log.open("a") as f:
        f.write(f"$ {shlex.join(command)}\n")
        f.flush()
        if subprocess.run(command, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            raise UserError(f"evaluate.py failed; see {log}")
    results = json.loads(pending.read_text())["results"]
    predictions_path = pending.with_suffix(".predictions.jsonl")
    predictions = read_jsonl(predictions_path)
    for t in stale:
        own = [r for r in results if r["ckpt"] == t.ckpt]
        own_predictions = [p for p in predictions if p["ckpt"] == t.ckpt]
        t.eval_path.parent.mkdir(parents=True, exist_ok=True)
        t.eval_path.with_suffix(".predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in own_predictions))
        t.eval_path.write_text(json.dumps({"settings": {**settings, "ckpt": t.ckpt}, "results": own}, indent=2))
        evaluations[t.name] = [{**r, "predictions": [p for p in own_predictions if p["eval_file"] == r["eval_file"]]}
                               for r in own]
    pending.unlink()
    predictions_path.unlink()
    return evaluations


def eval_targets(config: dict, out: Path) -> list[Target]:
    """Every checkpoint of the report, in table order; the offsets place each curve on one training-time axis."""
    warm = checkpoint_path("warm_start", config, out)
    if not warm.is_dir():
        raise UserError(f"{warm}: the head-to-head's warm start is missing; redo the SFT run with --force sft")

    def seconds(ckpt: Path) -> float:
        return json.loads((ckpt / "summary.json").read_text())["train_seconds"]

    targets = []
    for spec in planned(config):
        if spec.name == "base":
            targets.append(Target("base", config["model_name"], out / "base" / "eval-base.json"))
            continue
        ckpt = checkpoint_path(spec.name, config, out)
        offset = seconds(checkpoint_path(spec.starts_from, config, out)) if spec.script and spec.starts_from else 0.0
        targets.append(Target(spec.name, str(ckpt), ckpt.parent / f"eval-{ckpt.name}.json", offset))
    return targets


def main() -> None:
    # ---- config ---------------------------------------------------------------------------------------
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", nargs="*", metavar="RUN", default=None,
                        help="redo these runs (all, without names); earlier ones are renamed NAME.old-<time>")
    args, config = parse_args("compare", parser)
    if process_count() > 1:
        raise UserError("compare.py starts every run itself: run it with python, and set --launcher (e.g. "
                        '"torchrun --standalone --nproc_per_node 8") to start each run on several processes')
    started, out = time.time(), Path(config["output_dir"])
    common = forwarded_overrides(args.config, config)  # passed to every script, after --config
    runs = plan_runs(config, out)
    names = [r.name for r in runs]
    forced = set(names if args.force == [] else args.force or [])
    if forced - set(names):
        raise UserError(f"--force {' '.join(sorted(forced - set(names)))}: unknown run; runs: {', '.join(names)}")
    sft_steps = sft_total_steps(resolve_config("sft", args.config, common))
    if not 0 < config["warm_start_steps"] < sft_steps:
        raise UserError(f"warm_start_steps {config['warm_start_steps']}: must be at least 1 and below the SFT run's "
                        f"{sft_steps} steps (its step_N/ is the head-to-head's warm start)")

    # ---- plan: keep finished runs, move unfinished or forced ones aside ---------------------------------
    redo, resume, stale = set(), set(), {}
    for run in runs:
        finished = run.script is None or (out / run.name / "final").is_dir()
        resumable = not finished and bool(complete_steps(out / run.name))
        if run.name in forced or (not finished and not resumable) or run.upstream in redo:
            redo.add(run.name)
        elif resumable:  # interrupted after a save: continue it (the trainer refuses a changed config)
            resume.add(run.name)
        elif run.script and (changed := changed_settings(run, out, common, args.config)):
            stale[run.name] = changed
    if stale:
        raise UserError(f"runs in {out} were trained with other settings than this command asks for ("
                        + "; ".join(f"{n}: {', '.join(keys)}" for n, keys in stale.items())
                        + f"); redo them with --force {' '.join(stale)} (the old runs are kept), or pass another "
                        "--output_dir")
    for name in (n for n in names if n in redo and (out / n).exists()):
        move_aside(out / name)
    kept = [n for n in names if n not in redo | resume and (out / n).exists()]
    print(f"output: {out}\nkept: {', '.join(kept) or '-'}\nto run: {', '.join(n for n in names if n in redo) or '-'}"
          + (f"\nto resume: {', '.join(n for n in names if n in resume)}" if resume else ""))

    # ---- train --------------------------------------------------------------------------------------
    for run in runs:
        if run.name in redo | resume and run.script:
            train(run, out, common, args.config, config["launcher"], resume=run.name in resume)

    # ---- evaluate -----------------------------------------------------------------------------------
    targets = eval_targets(config, out)
    evaluations = evaluate(targets, out, common, config, args.config)

    # ---- report -------------------------------------------------------------------------------------
    report = write_report(out, targets, evaluations, config, {"command": shlex.join(["python", *sys.argv]),
                                                  "invocation_seconds": time.time() - started,
                                                  "kept": kept, "config_file": args.config})
    print(f"report: {report}")


if __name__ == "__main__":
    run_cli(main)
