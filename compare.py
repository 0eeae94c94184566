"""The experiment: one command that fills the paper's results table (sections 5-6): SFT vs GRPO vs SFT -> GRPO.

    python compare.py --config configs/tiny.yaml --output_dir results/tiny   # built-in tiny model, CPU
    python compare.py --config configs/tiny.yaml --force                     # redo every run (old ones kept)
    python compare.py --config configs/tiny.yaml --force grpo                # redo one run (and runs built on it)
    python compare.py --config configs/tiny.yaml --seeds 3 --output_dir results/tiny-3seeds  # seeds 42, 43, 44
    python compare.py --config configs/tiny.yaml --studies data_efficiency,sensitivity --study_step_fraction 0.5
    python compare.py                                                         # TinyLlama-1.1B-Chat (GPU)

Runs, each a subprocess of the repo's own scripts (no run shares a process, memory peak or timer with another),
under OUTPUT_DIR (the `compare:` section of config.yaml holds every setting; mathrl/runs.py is the list that
planning, evaluation and the report loop over):
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
  sft_grpo_length  only when sft_grpo_length_reward_weight > 0 (configs/tiny_reasoning.yaml): sft_grpo with that
             length_reward_weight, the two-stage recipe as it is written (sft_grpo is the same GRPO without it)
Then evaluate.py decodes every checkpoint greedily (the headline) and samples diversity_samples completions per
prompt, and OUTPUT_DIR/REPORT.md, results.json, samples.md and *.png are written (mathrl/report.py). Each run's
console output is in OUTPUT_DIR/NAME/train.log.

Side by side: up to parallel_runs runs at a time (1 in config.yaml, 2 in configs/tiny.yaml; mathrl/scheduler.py),
each started once the checkpoint it starts from exists: grpo beside sft, the head-to-head as soon as the SFT run
has saved its warm start. Above 1, each run gets OMP_NUM_THREADS=1 unless it is set, so two runs on two cores do
not fight over threads; runs that share a machine time their training steps on a shared machine (the report says
how many ran at a time). The evaluations also run parallel_runs at a time (per seed, or the targets split among
calls): each checkpoint's evaluation is seeded on its own, so it is the same in any call.

Seeds: `--seeds N` runs the whole experiment with seeds seed, seed+1, ..., seed+N-1, each in OUTPUT_DIR/seed-<s>/
(a complete single-seed experiment with its own REPORT.md), and writes OUTPUT_DIR/REPORT.md and results.json over
the seeds: per run the mean ± seed std of each accuracy beside its binomial SE, and each claim judged against the
larger of the seed std and the sampling SE of its difference (mathrl/claims.py). Reuse, resume and --force work
per seed as below; --seeds 1 (the default) is the single-seed layout, and the two layouts never share OUTPUT_DIR.

Studies (opt-in, docs/STUDIES.md): `--studies data_efficiency,sensitivity,kl_estimator,extended_sft` also runs
those studies (mathrl/studies.py) under OUTPUT_DIR/studies/<study>/<run>/, planned, scheduled, reused, resumed and
forced like the runs above (their names are studies/<study>/<run>), evaluated greedily, each with its REPORT.md
section, plot and verdicts and its numbers in results.json. A study point with a main run's settings is that run,
reused, unless study_step_fraction (compare:) shortens every study run; then it is rerun at that budget.

Reuse: a run whose final/ exists is kept. A run interrupted after saving a step_N/ (train_sft.py and
train_grpo.py save one on SIGINT / SIGTERM) is resumed from it (--resume_from auto); a run directory with
neither (interrupted before any save) is moved aside to NAME.old-<timestamp> and redone. So running the same
command again finishes an interrupted compare.
`--force [NAME ...]` moves those runs (every run, without names; with --seeds, in every seed) aside the same way
and redoes them; a run built on a redone run is redone too. Nothing is deleted. A kept run whose saved config differs from what this command
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
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mathrl.config import DEFAULT_CONFIG_PATH, for_checkpoint, load_saved_config, parse_args, read_yaml, resolve_config
from mathrl.data import load_jsonl, read_jsonl, training_subset
from mathrl.distributed import process_count
from mathrl.errors import UserError, run_cli
from mathrl.modeling import resolve_model_path
from mathrl.resume import complete_steps
from mathrl.report import write_report, write_seeds_report
from mathrl.runs import BY_NAME, GRPO_SCRIPT, OPTIONAL, SFT_SCRIPT, RunSpec, planned
from mathrl.scheduler import Job, run_jobs
from mathrl.studies import STUDIES, Point, check_study_config, parse_studies, point_settings, reused

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


@dataclass
class Experiment:
    """One seed's whole experiment: its directory, the overrides every script of it gets, and its plan."""
    seed: int
    out: Path
    common: list[str]                 # passed to every script, after --config
    prefix: str                       # before a run's name on the console: "" or "seed-<seed>/"
    runs: list[Run] = field(default_factory=list)
    redo: set[str] = field(default_factory=set)
    resume: set[str] = field(default_factory=set)
    kept: list[str] = field(default_factory=list)


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
    if spec.name in OPTIONAL:  # the optional runs add the two-stage recipe's length term
        return ["--length_reward_weight", cli_value(config[OPTIONAL[spec.name]])]
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


def study_run_name(study: str, point: Point) -> str:
    """A study run's name: its directory relative to OUTPUT_DIR, and what --force takes."""
    return f"studies/{study}/{point.name}"


def study_runs(studies: list[str], config: dict, config_file: str | None, common: list[str], out: Path) -> list[Run]:
    """The runs the chosen studies (mathrl/studies.py) train, in STUDIES order: every point that is not a reused
    main run, with the settings it changes and the main runs' step budget times study_step_fraction."""
    sections = {"sft": resolve_config("sft", config_file, common), "grpo": resolve_config("grpo", config_file, common)}
    totals = {SFT_SCRIPT: sft_total_steps(sections["sft"]), GRPO_SCRIPT: sections["grpo"]["num_train_steps"]}
    runs = []
    for study in (s for s in STUDIES if s.name in studies):
        check_study_config(study.name, config, sections["grpo"])
        for point in study.points:
            if reused(point, config["study_step_fraction"]):
                continue
            section = "sft" if point.script == SFT_SCRIPT else "grpo"
            settings = point_settings(point, sections[section], totals[point.script], config["study_step_fraction"])
            overrides = [t for k, v in settings.items() for t in (f"--{k}", cli_value(v))]
            init_from = checkpoint_path(point.starts_from, config, out) if point.starts_from else None
            runs.append(Run(study_run_name(study.name, point), point.script, section, overrides, point.starts_from,
                            init_from))
    return runs


def study_targets(studies: list[str], config: dict, out: Path) -> dict[str, dict[str, Target]]:
    """{study: {point: the checkpoint to report}}: a reused point's is its main run's (evaluated with the main
    targets), any other's is its own final/ in OUTPUT_DIR/studies/<study>/."""
    targets = {}
    for study in (s for s in STUDIES if s.name in studies):
        targets[study.name] = {}
        for point in study.points:
            name = point.main_run if reused(point, config["study_step_fraction"]) else study_run_name(study.name, point)
            ckpt = out / name / "final"
            targets[study.name][point.name] = Target(name, str(ckpt), ckpt.parent / f"eval-{ckpt.name}.json")
    return targets


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
    examples = training_subset(load_jsonl(sft["train_file"]), sft["train_fraction"], sft["seed"])
    batches = math.ceil(len(examples) / sft["batch_size"])
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
    """Config keys whose value in the run's saved config differs from what this command would use now.

    A key the saved config lacks was added to config.yaml after the run was made; a new key's default keeps the
    behaviour from before it existed, so it is a change only when this command sets it to something else."""
    expected = resolve_config(run.section, config_file, run_args(run, out, common))
    expected = for_checkpoint(expected, str(run.init_from or expected["init_from"] or expected["model_name"]))
    saved, defaults = load_saved_config(out / run.name / "final"), resolve_config(run.section)
    saved = {**{k: defaults[k] for k in set(defaults) - set(saved)}, **saved}
    return sorted(k for k in set(expected) | set(saved)
                  if k not in NOT_COMPARED and expected.get(k, "<missing>") != saved.get(k, "<missing>"))


def script_command(script: str, config_file: str | None, overrides: list[str], launcher: str = "") -> list[str]:
    """How a script is started: with this Python, or with `launcher` (e.g. torchrun: k processes per run)."""
    start = shlex.split(launcher) if launcher else [sys.executable]
    return [*start, str(REPO_ROOT / script), *(["--config", config_file] if config_file else []), *overrides]


def training_job(run: Run, exp: Experiment, config_file: str | None, launcher: str) -> Job:
    """A run to train (or resume) as a job: ready once the checkpoint it starts from exists."""
    resume = run.name in exp.resume

    def command() -> tuple[str, list[str]]:
        (exp.out / run.name).mkdir(parents=True, exist_ok=True)
        argv = script_command(run.script, config_file, [*run_args(run, exp.out, exp.common),
                                                        *(["--resume_from", "auto"] if resume else [])], launcher)
        return f"{'resuming' if resume else 'training'} {exp.prefix}{run.name}: {run.script}", argv

    return Job(f"{exp.prefix}{run.name}", exp.out / run.name / "train.log", command,
               ready=lambda finished: run.init_from is None or run.init_from.is_dir(), needs=str(run.init_from))


def load_evaluation(eval_path: Path) -> list[dict]:
    """A stored evaluation: one result per eval file, each with its predictions (read from beside it)."""
    results = json.loads(eval_path.read_text())["results"]
    predictions = read_jsonl(eval_path.with_suffix(".predictions.jsonl"))
    return [{**r, "predictions": [p for p in predictions if p["eval_file"] == r["eval_file"]]} for r in results]


def evaluation_settings(config: dict, config_file: str | None, common: list[str]) -> dict:
    """What a stored evaluation must have been made with to be reused (its checkpoint is added per target)."""
    return {"eval_files": [f for f in (config["eval_file"], config["ood_eval_file"]) if f],
            "samples": config["diversity_samples"], "temperature": config["diversity_temperature"],
            "top_p": config["diversity_top_p"],
            "config": {k: v for k, v in resolve_config("evaluate", config_file, common).items()
                       if k not in NOT_COMPARED}}


def stale_targets(targets: list[Target], settings: dict) -> list[Target]:
    """The targets whose saved evaluation is missing or made with other settings."""
    return [t for t in targets if not t.eval_path.is_file()
            or json.loads(t.eval_path.read_text()).get("settings") != {**settings, "ckpt": t.ckpt}]


def evaluation_command(stale: list[Target], pending: Path, settings: dict, common: list[str],
                       config_file: str | None, launcher: str) -> list[str]:
    """One evaluate.py call for these targets, writing its results to `pending` (its own scratch file)."""
    sampling = ["--samples", str(settings["samples"]), "--temperature", str(settings["temperature"]),
                "--top_p", str(settings["top_p"])] if settings["samples"] else []
    return script_command("evaluate.py", config_file, [
        *common, *[a for t in stale for a in ("--ckpt", t.ckpt)],
        *[a for f in settings["eval_files"] for a in ("--eval_file", f)],
        *sampling, "--output", cli_value(pending), "--overwrite"], launcher)


def store_evaluations(stale: list[Target], pending: Path, settings: dict) -> None:
    """Split evaluate.py's results into one evaluation beside each checkpoint (reused next time)."""
    results = json.loads(pending.read_text())["results"]
    predictions_path = pending.with_suffix(".predictions.jsonl")
    predictions = read_jsonl(predictions_path)
    for t in stale:
        own_predictions = [p for p in predictions if p["ckpt"] == t.ckpt]
        t.eval_path.parent.mkdir(parents=True, exist_ok=True)
        t.eval_path.with_suffix(".predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in own_predictions))
        t.eval_path.write_text(json.dumps({"settings": {**settings, "ckpt": t.ckpt},
                                           "results": [r for r in results if r["ckpt"] == t.ckpt]}, indent=2))
    pending.unlink()
    predictions_path.unlink()


def evaluation_jobs(exp: Experiment, config: dict, config_file: str | None, groups: int,
                    after: list[str], studies: list[str] | None = None) -> list[Job]:
    """The seed's evaluations as `groups` evaluate.py calls (each a share of the stale targets), ready once the jobs
    named in `after` (its training runs) finished. Each checkpoint's evaluation is seeded by itself, so it is the
    same in whichever call it runs. With `studies`: the evaluations of those studies' own runs instead, greedy only
    (their sections report greedy accuracy and lengths, no diversity), in OUTPUT_DIR/studies/."""
    settings = evaluation_settings(config, config_file, exp.common)
    where, label = exp.out, "evaluate"
    if studies is not None:
        settings, where, label = {**settings, "samples": 0}, exp.out / "studies", "studies-evaluate"
    shares: list[list[Target]] = []

    def candidates() -> list[Target]:
        if studies is None:
            return eval_targets(config, exp.out)
        return [t for points in study_targets(studies, config, exp.out).values() for t in points.values()
                if t.name.startswith("studies/")]

    def share(g: int) -> list[Target]:
        if not shares:  # decided once, when the first call starts: a finished call's results are no longer stale
            stale = stale_targets(candidates(), settings)
            if not stale:
                print(f"every {'study ' if studies is not None else ''}evaluation is up to date"
                      + (f" in {exp.out}" if exp.prefix else ""), flush=True)
            shares.extend(stale[i::groups] for i in range(groups))
        return shares[g]

    def job(g: int) -> Job:
        suffix = f"-{g + 1}" if groups > 1 else ""
        pending = where / f"{label}-pending{suffix}.json"

        def command() -> tuple[str, list[str]] | None:
            targets = share(g)
            if not targets:
                return None
            where.mkdir(parents=True, exist_ok=True)
            return (f"evaluating {exp.prefix}{', '.join(t.name for t in targets)}",
                    evaluation_command(targets, pending, settings, exp.common, config_file, config["launcher"]))

        return Job(f"{exp.prefix}{label}{suffix}", where / f"{label}{suffix}.log", command,
                   ready=lambda finished: set(after) <= finished, done=lambda: store_evaluations(share(g), pending,
                                                                                              settings))
    return [job(g) for g in range(groups)]


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


def seed_experiments(config: dict, config_file: str | None, seeds: int) -> list[Experiment]:
    """One experiment per seed: seeds config.seed, config.seed + 1, ... With one seed, OUTPUT_DIR is its directory
    (and the scripts get compare's overrides unchanged); with more, OUTPUT_DIR/seed-<seed>/ each."""
    out, common = Path(config["output_dir"]), forwarded_overrides(config_file, config)
    if seeds == 1:
        return [Experiment(config["seed"], out, common, "")]
    others = [t for k, v in zip(common[::2], common[1::2]) if k != "--seed" for t in (k, v)]
    return [Experiment(s, out / f"seed-{s}", [*others, "--seed", str(s)], f"seed-{s}/")
            for s in range(config["seed"], config["seed"] + seeds)]


def check_layout(out: Path, seeds: int, names: list[str]) -> None:
    """A single-seed experiment and a multi-seed one never share OUTPUT_DIR (each writes REPORT.md there)."""
    if seeds > 1 and (single := [n for n in names if (out / n).exists()]):
        raise UserError(f"{out} holds a single-seed experiment ({', '.join(single)}); --seeds {seeds} keeps each seed "
                        "in OUTPUT_DIR/seed-<seed>/: pass another --output_dir")
    if seeds == 1 and (multi := sorted(p.name for p in out.glob("seed-*"))):
        raise UserError(f"{out} holds a multi-seed experiment ({', '.join(multi)}): run it with --seeds, or pass "
                        "another --output_dir")


def plan(exp: Experiment, forced: set[str], config_file: str | None) -> dict[str, list[str]]:
    """Which of the experiment's runs are redone (forced, unfinished without a save, or built on a redone run) and
    which resumed; returns the kept runs whose settings differ from this command's ({run: keys})."""
    stale = {}
    for run in exp.runs:
        finished = run.script is None or (exp.out / run.name / "final").is_dir()
        resumable = not finished and bool(complete_steps(exp.out / run.name))
        if run.name in forced or (not finished and not resumable) or run.upstream in exp.redo:
            exp.redo.add(run.name)
        elif resumable:  # interrupted after a save: continue it (the trainer refuses a changed config)
            exp.resume.add(run.name)
        elif run.script and (changed := changed_settings(run, exp.out, exp.common, config_file)):
            stale[exp.prefix + run.name] = changed
    return stale


def child_environment(parallel_runs: int) -> dict | None:
    """Side by side, each run gets one thread (OMP_NUM_THREADS=1) unless the user set OMP_NUM_THREADS."""
    if parallel_runs > 1 and "OMP_NUM_THREADS" not in os.environ:
        return {**os.environ, "OMP_NUM_THREADS": "1"}
    return None


def main() -> None:
    # ---- config ---------------------------------------------------------------------------------------
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", nargs="*", metavar="RUN", default=None,
                        help="redo these runs (all, without names); earlier ones are renamed NAME.old-<time>")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="run the experiment with seeds seed, seed+1, ..., seed+N-1, each in "
                             "OUTPUT_DIR/seed-<seed>/, and report over them (default 1: one experiment in OUTPUT_DIR)")
    parser.add_argument("--studies", default="", metavar="NAME,...",
                        help="also run these opt-in studies (comma list: "
                             + ", ".join(s.name for s in STUDIES) + "), each in OUTPUT_DIR/studies/<study>/ with "
                             "its own REPORT.md section (docs/STUDIES.md)")
    args, config = parse_args("compare", parser)
    studies = parse_studies(args.studies)
    if process_count() > 1:
        raise UserError("compare.py starts every run itself: run it with python, and set --launcher (e.g. "
                        '"torchrun --standalone --nproc_per_node 8") to start each run on several processes')
    if args.seeds < 1 or config["parallel_runs"] < 1:
        raise UserError(f"--seeds {args.seeds}, parallel_runs {config['parallel_runs']}: each must be at least 1")
    started, out = time.time(), Path(config["output_dir"])
    experiments = seed_experiments(config, args.config, args.seeds)
    for exp in experiments:
        exp.runs = [*plan_runs(config, exp.out), *study_runs(studies, config, args.config, exp.common, exp.out)]
    names = [r.name for r in experiments[0].runs]
    forced = set(names if args.force == [] else args.force or [])
    if forced - set(names):
        raise UserError(f"--force {' '.join(sorted(forced - set(names)))}: unknown run; runs: {', '.join(names)}")
    check_layout(out, args.seeds, names)
    sft_steps = sft_total_steps(resolve_config("sft", args.config, experiments[0].common))
    if not 0 < config["warm_start_steps"] < sft_steps:
        raise UserError(f"warm_start_steps {config['warm_start_steps']}: must be at least 1 and below the SFT run's "
                        f"{sft_steps} steps (its step_N/ is the head-to-head's warm start)")

    # ---- plan: keep finished runs, move unfinished or forced ones aside ---------------------------------
    stale = {run: keys for exp in experiments for run, keys in plan(exp, forced, args.config).items()}
    if stale:
        redo = dict.fromkeys(name.split("/")[-1] for name in stale)
        raise UserError(f"runs in {out} were trained with other settings than this command asks for ("
                        + "; ".join(f"{n}: {', '.join(keys)}" for n, keys in stale.items())
                        + f"); redo them with --force {' '.join(redo)} (the old runs are kept), or pass another "
                        "--output_dir")
    for exp in experiments:
        for name in (n for n in names if n in exp.redo and (exp.out / n).exists()):
            move_aside(exp.out / name)
        exp.kept = [n for n in names if n not in exp.redo | exp.resume and (exp.out / n).exists()]
        print(f"output: {exp.out}\nkept: {', '.join(exp.kept) or '-'}\n"
              f"to run: {', '.join(n for n in names if n in exp.redo) or '-'}"
              + (f"\nto resume: {', '.join(n for n in names if n in exp.resume)}" if exp.resume else ""))

    # ---- base model: a built-in one is written (builtin:tiny-base: pretrained) once, before runs share it ----
    if any(exp.redo | exp.resume for exp in experiments):
        resolve_model_path(config["model_name"], config)

    # ---- train and evaluate, parallel_runs at a time ----------------------------------------------------
    groups = max(1, math.ceil(config["parallel_runs"] / len(experiments)))  # evaluate.py calls per seed
    jobs = []
    for exp in experiments:
        to_train = [run for run in exp.runs if run.name in exp.redo | exp.resume and run.script]
        training = [training_job(run, exp, args.config, config["launcher"]) for run in to_train]
        main_training = [f"{exp.prefix}{run.name}" for run in to_train if not run.name.startswith("studies/")]
        jobs += training + evaluation_jobs(exp, config, args.config, groups, main_training)
        if studies:  # the studies' own checkpoints, once every run finished (a study run may start from sft/final)
            jobs += evaluation_jobs(exp, config, args.config, groups, [job.name for job in training], studies)
    run_jobs(jobs, config["parallel_runs"], child_environment(config["parallel_runs"]))

    # ---- report -------------------------------------------------------------------------------------
    context = {"command": shlex.join(["python", *sys.argv]), "config_file": args.config,
               "parallel_runs": config["parallel_runs"]}
    for exp in experiments:
        targets = eval_targets(config, exp.out)
        evaluations = {t.name: load_evaluation(t.eval_path) for t in targets}
        points = {study: {p: (t, load_evaluation(t.eval_path)) for p, t in by_point.items()}
                  for study, by_point in study_targets(studies, config, exp.out).items()}
        report = write_report(exp.out, targets, evaluations, {**config, "seed": exp.seed},
                              {**context, "invocation_seconds": time.time() - started, "kept": exp.kept}, points)
    if len(experiments) > 1:
        report = write_seeds_report(out, {exp.seed: exp.out for exp in experiments},
                                    {**context, "invocation_seconds": time.time() - started})
    print(f"report: {report}")


if __name__ == "__main__":
    run_cli(main)
