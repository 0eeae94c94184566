"""compare.py's outputs: REPORT.md, results.json, samples.md and the plots, from the runs it left in OUTPUT_DIR.

Every number comes from a run's files, final/summary.json (steps, training and wall time, tokens, peak memory,
device) and metrics.jsonl (curves), and from the evaluate.py results compare.py hands over (it also keeps them
beside each checkpoint, eval-*.json and eval-*.predictions.jsonl, for reuse). The claim lines come from
mathrl/claims.py.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from mathrl import smollm2
from mathrl import claims as judge
from mathrl.claims import (aggregate_claims, aggregate_comparison, binomial_se, check_claims, eval_curve, last_mean,
                           mean_and_std, notes)
from mathrl.config import load_saved_config
from mathrl.data import OPS, has_trained_twin, load_jsonl, operation_of, read_jsonl, training_subset
from mathrl.errors import UserError
from mathrl.diversity import diversity_table
from mathrl.runs import BY_NAME, GRPO_SCRIPT, trained_by
from mathrl.studies import LR_FACTORS, PAPER_KL_ESTIMATOR, SFT_STEP_SHARES, lr_name, steps_name
from mathrl.studies import BY_NAME as STUDY_BY_NAME

# ---- loading ----------------------------------------------------------------------------------------------

def load_run(target, evaluation: list[dict], config: dict) -> dict:
    """Summary and metrics of one compare.py target, and its evaluation (one result per eval file, predictions
    included), keyed as mathrl/claims.py expects."""
    spec = BY_NAME[target.name]
    # a checkpoint with a summary.json, and a run with its own curves (not the warm start, a step of sft's)
    return load_checkpoint(target, evaluation, config, trained=spec.script is not None or spec.starts_from is not None,
                           own_run=spec.script is not None)


def load_checkpoint(target, evaluation: list[dict], config: dict, trained: bool = True, own_run: bool = True) -> dict:
    """load_run's record of any checkpoint: a main run's or a study point's (always a trained run's final/)."""
    ckpt = Path(target.ckpt)
    by_file = {result["eval_file"]: result for result in evaluation}
    return {
        "name": target.name, "ckpt": target.ckpt, "offset_s": target.offset_s,
        "summary": json.loads((ckpt / "summary.json").read_text()) if trained else {},
        "metrics": read_jsonl(ckpt.parent / "metrics.jsonl") if own_run else [],
        "held_out": by_file[config["eval_file"]],
        "ood": by_file.get(config["ood_eval_file"]) if config["ood_eval_file"] else None,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_description(config: dict) -> str:
    """The report's model line: the model_name, and for a built-in model what it is."""
    model = config["model_name"]
    shape = ("Llama architecture, hidden {tiny_hidden_size}, {tiny_num_layers} layers, {tiny_num_heads} heads, MLP "
             "{tiny_intermediate_size}; character tokenizer").format(**config) if "tiny_hidden_size" in config else ""
    if model == "builtin:tiny":
        return f"{model} ({shape}; trained from scratch)"
    if model == "builtin:tiny-base":
        return (f"{model} ({shape}; pretrained on arithmetic text in other surface forms than the task's, "
                "tiny_train facts only: mathrl/tiny_base.py)")
    if model == f"builtin:{smollm2.NAME}":
        return f"{model} ({smollm2.DESCRIPTION})"
    if model.startswith("builtin:"):
        return f"{model} (a TinyLlama-1.1B-Chat stand-in with random weights, mathrl/standins.py)"
    return model


def header(runs: dict, config: dict, context: dict) -> dict:
    model = model_description(config)
    data = {"train": config["train_file"], "held_out": config["eval_file"], "ood": config["ood_eval_file"]}
    summaries = [r["summary"] for r in runs.values() if r["summary"]]
    devices = sorted({s.get("device", "?") for s in summaries})
    threads = sorted({s.get("torch_threads", "?") for s in summaries}, key=str)
    return {
        "model": model, "builtin_model": config["model_name"].startswith("builtin:"),
        "data": {k: {"file": f, "examples": len(load_jsonl(f))} for k, f in data.items() if f},
        "seed": config["seed"], "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores)",
        "training_device": ", ".join(devices), "torch_threads": ", ".join(map(str, threads)),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "runs_wall_time_s": sum(r["summary"]["wall_time_s"] for n, r in runs.items()
                                if r["summary"] and n != "warm_start"),
        **context,
    }


# ---- twin-free held-out accuracy ---------------------------------------------------------------------------

def twin_free_set(config: dict) -> dict:
    """The held-out file's examples, whether each one's twin is trained, and how many are twin-free (their twin is
    not in train_file), in all and per operation ({op: [twin-free, all]})."""
    examples = load_jsonl(config["eval_file"])
    trained_twin = has_trained_twin(examples, load_jsonl(config["train_file"]))
    per_op = {}
    for example, trained in zip(examples, trained_twin):
        counts = per_op.setdefault(operation_of(example), [0, 0])
        counts[0] += not trained
        counts[1] += 1
    order = {op: i for i, op in enumerate(OPS)}
    return {"examples": examples, "trained_twin": trained_twin, "n": trained_twin.count(False),
            "of": len(examples), "per_operation": dict(sorted(per_op.items(), key=lambda kv: order.get(kv[0], 4)))}


def twin_free_accuracy(predictions: list[dict], eval_examples: list[dict], trained_twin: list[bool]) -> float | None:
    """Accuracy over the held-out problems whose twin is not trained (None when there is none). `predictions` are
    evaluate.py's, in the eval file's order."""
    if [p["prompt"] for p in predictions] != [e["prompt"] for e in eval_examples]:
        raise UserError("the held-out predictions do not match the eval file's prompts (was the file changed after "
                        "the evaluation?)")
    free = [p["correct"] for p, t in zip(predictions, trained_twin) if not t]
    return sum(free) / len(free) if free else None


# ---- tables -----------------------------------------------------------------------------------------------

def row(run: dict, twin_free: dict) -> dict:
    """One line of the paper's results table (results.json's "runs"); twin_free: `twin_free_set`'s."""
    s, held, ood = run["summary"], run["held_out"], run["ood"]
    steps, seconds = s.get("step"), s.get("train_seconds")
    free = twin_free_accuracy(held["predictions"], twin_free["examples"], twin_free["trained_twin"])
    return {
        "ckpt": run["ckpt"], "description": BY_NAME[run["name"]].description,
        "held_out_accuracy": held["accuracy"], "held_out_n": held["num_examples"],
        "held_out_se": binomial_se(held["accuracy"], held["num_examples"]),
        "twin_free_accuracy": free, "twin_free_n": twin_free["n"],
        "twin_free_se": binomial_se(free, twin_free["n"]) if free is not None else None,
        "ood_accuracy": ood["accuracy"] if ood else None, "ood_n": ood["num_examples"] if ood else None,
        "ood_se": binomial_se(ood["accuracy"], ood["num_examples"]) if ood else None,
        "per_operation": held["per_operation"], "ood_per_operation": ood["per_operation"] if ood else None,
        "mean_completion_tokens": held["mean_completion_tokens"],
        "steps": steps, "train_seconds": seconds, "seconds_per_step": seconds / steps if steps else None,
        "wall_time_s": s.get("wall_time_s"), "tokens_seen": s.get("tokens_seen"),
        "peak_memory_mb": s.get("peak_memory_mb"), "stopped_by_time": s.get("stopped_by_time"),
        "init_from": s.get("init_from"), "device": s.get("device"),
    }


def fmt(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def with_se(accuracy: float | None, se: float | None, n: int | None) -> str:
    return "-" if accuracy is None else f"{accuracy:.3f} ± {se:.3f} ({n})"


def results_table(rows: dict) -> str:
    lines = ["| run | held-out acc ± SE (n) | twin-free held-out acc ± SE (n)¹ | OOD acc ± SE (n) | "
             + " | ".join(OPS) + " | mean tokens | steps | train s | s/step | wall s | tokens | peak MB | "
             "stopped by time |"]
    lines.append("|" + "---|" * (lines[0].count("|") - 1))
    for name, r in rows.items():
        held = with_se(r["held_out_accuracy"], r["held_out_se"], r["held_out_n"])
        free = with_se(r["twin_free_accuracy"], r["twin_free_se"], r["twin_free_n"])
        ood = with_se(r["ood_accuracy"], r["ood_se"], r["ood_n"])
        ops = " | ".join(fmt(r["per_operation"].get(op), ".2f") for op in OPS)
        lines.append(f"| {name} | {held} | {free} | {ood} | "
                     f"{ops} | {r['mean_completion_tokens']:.2f} | {fmt(r['steps'])} | {fmt(r['train_seconds'], '.1f')}"
                     f" | {fmt(r['seconds_per_step'], '.3f')} | {fmt(r['wall_time_s'], '.1f')} | "
                     f"{fmt(r['tokens_seen'], ',')} | {fmt(r['peak_memory_mb'], '.0f')} | "
                     f"{ {True: 'yes', False: 'no', None: '-'}[r['stopped_by_time']]} |")
    return "\n".join(lines)


def diversity_rows(runs: dict) -> dict:
    """{run: {"held_out" | "ood": diversity dict}} for every run evaluated with samples."""
    out = {}
    for name, run in runs.items():
        sets = {label: run[label]["diversity"] for label in ("held_out", "ood")
                if run[label] and run[label].get("diversity")}
        if sets:
            out[name] = sets
    return out


# ---- samples.md -------------------------------------------------------------------------------------------

def code(text: str) -> str:
    return "`" + json.dumps(text, ensure_ascii=False).replace("`", "'") + "`"


def samples_markdown(runs: dict, count: int) -> str:
    lines = ["# Sample completions (paper 5.2.2)", "",
             f"The first {count} prompts of each eval set; greedy completion, then the sampled ones "
             "(✓ = the extracted answer is right). Completions are shown as JSON strings, so spaces are visible.", ""]
    for name, run in runs.items():
        lines += [f"## {name}: {BY_NAME[name].description}", "", f"checkpoint: `{run['ckpt']}`", ""]
        for label in ("held_out", "ood"):
            if not run[label]:
                continue
            lines += [f"### {label}: {run[label]['eval_file']}", ""]
            for p in run[label]["predictions"][:count]:
                mark = "✓" if p["correct"] else "✗"
                lines.append(f"- {code(p['prompt'])} (answer {p['answer']})")
                lines.append(f"  - greedy: {code(p['completion'])} {mark}")
                if p.get("samples"):
                    lines.append("  - sampled: " + ", ".join(code(t) for t in p["samples"]))
            lines.append("")
    return "\n".join(lines)


# ---- plots ------------------------------------------------------------------------------------------------

def plot(out: Path, runs: dict) -> list[str]:
    """The four figures; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(run, key):
        points = [(r["step"], r[key]) for r in run["metrics"] if key in r]
        return [p[0] for p in points], [p[1] for p in points]

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        return name

    names = []
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(*series(runs["sft"], "loss"))
    loss_ax.set(title="SFT training loss", xlabel="step", ylabel="loss")
    for key, label in (("eval_accuracy", "held-out"), ("ood_accuracy", "OOD")):
        acc_ax.plot(*series(runs["sft"], key), marker="o", label=label)
    acc_ax.set(title="SFT greedy accuracy", xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02))
    acc_ax.legend()
    names.append(save(fig, "sft_curves.png"))

    grpo_runs = [n for n in trained_by(GRPO_SCRIPT) if n in runs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("reward_mean", "kl", "eval_accuracy"),
                              ("GRPO mean reward", "KL to the reference", "held-out greedy accuracy")):
        for name in grpo_runs:
            ax.plot(*series(runs[name], key), marker="o" if key == "eval_accuracy" else None, label=name)
        ax.set(title=title, xlabel="step")
        ax.legend()
    names.append(save(fig, "grpo_curves.png"))

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.axhline(runs["base"]["held_out"]["accuracy"], color="gray", linestyle="--", label="base (untrained)")
    for name, run in runs.items():
        curve = eval_curve(run)
        if curve:
            ax.plot([run["offset_s"] + t for _, t, _ in curve], [a for *_, a in curve], marker="o", markersize=3,
                    label=name)
    ax.set(title="Held-out greedy accuracy vs training time (from the base model; evaluation excluded)",
           xlabel="training seconds", ylabel="accuracy", ylim=(-0.02, 1.02))
    ax.legend()
    names.append(save(fig, "accuracy_vs_time.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    for name in grpo_runs:
        ax.plot(*series(runs[name], "completion_length_mean"), label=name)
    ax.set(title="Mean completion length during GRPO (tokens, EOS included)", xlabel="step", ylabel="tokens")
    ax.legend()
    names.append(save(fig, "completion_length.png"))
    return names


# ---- REPORT.md --------------------------------------------------------------------------------------------

def twin_footnote(twin_free: dict) -> str:
    counts = ", ".join(f"{op} {free} of {total}" for op, (free, total) in twin_free["per_operation"].items())
    return (f"¹ Twin-free held-out: the {twin_free['n']} of {twin_free['of']} held-out problems whose twin (b + a for "
            f"a + b, a - c for a - b = c, b * a for a * b, a / q for a / b = q) is not in the training file "
            f"({counts}). The others can be answered by recalling the trained fact instead of computing it.")


def report_markdown(h: dict, rows: dict, diversity: dict, claims: list[dict], facts: list[str], plots: list[str],
                    config: dict) -> str:
    data = ", ".join(f"{k} {v['examples']} ({v['file']})" for k, v in h["data"].items())
    lines = ["# SFT vs GRPO vs SFT -> GRPO: results", ""]
    if h["builtin_model"]:
        lines += [f"> **Not a TinyLlama result.** These numbers come from {h['model']}, not from "
                  "TinyLlama-1.1B-Chat as in the paper.", ""]
    lines += [f"- model: {h['model']}", f"- data: {data}", f"- seed: {h['seed']}",
              f"- machine: {h['cpu']}; training device: {h['training_device']}; torch threads: {h['torch_threads']}; "
              f"OMP_NUM_THREADS: {h['omp_num_threads']}; runs at a time: {h['parallel_runs']}",
              f"- date: {h['date']}; total wall time of the runs: {h['runs_wall_time_s']:.0f} s; this compare.py "
              f"invocation: {h['invocation_seconds']:.0f} s (runs kept from before: {', '.join(h['kept']) or 'none'})",
              f"- command: `{h['command']}`", ""]
    lines += ["## Results (the paper's table)", "",
              "Greedy decoding. SE: binomial standard error sqrt(p(1-p)/n). Per-operation columns: held-out accuracy. "
              "Train s: time in training steps (evaluation and checkpoint saving excluded); tokens: prompt + "
              "completion tokens processed in training; peak MB: peak GPU memory, or the process's peak RSS on CPU.",
              "", results_table(rows), "", twin_footnote(h["twin_free"]), ""]
    ratio = next(c for c in claims if c["id"] == "b")["comparisons"][0]
    lines += [f"GRPO / SFT training time: **{ratio['total_ratio']:.2f}x** in total, {ratio['per_step_ratio']:.2f}x "
              "per step (the paper claims 3-4x).", ""]
    if diversity:
        lines += ["## Diversity of sampled answers", "",
                  f"{config['diversity_samples']} samples per prompt (temperature {config['diversity_temperature']:g}, "
                  f"top_p {config['diversity_top_p']:g}). pass@K: a prompt with at least one right sample; majority "
                  "vote: the most common extracted answer (ties: first seen); distinct: per prompt, ± SE over "
                  "prompts (mathrl/diversity.py).", "",
                  diversity_table([(name, label, d) for name, sets in diversity.items() for label, d in sets.items()]),
                  ""]
    lines += ["## The paper's claims, checked", "",
              "Differences within 2 standard errors are \"inconclusive\" (mathrl/claims.py).", ""]
    for c in claims:
        parts = [f"{x['runs']}: **{x['verdict']}** ({x['evidence']})" for x in c["comparisons"]]
        lines.append(f"- **({c['id']}) {c['claim']}**: " + "; ".join(parts))
    lines.append("")
    if facts:
        lines += ["## Notes", ""] + [f"- {f}" for f in facts] + [""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "Sample completions: [samples.md](samples.md)", ""]
    return "\n".join(lines)


def write_report(out: Path, targets: list, evaluations: dict[str, list[dict]], config: dict, context: dict,
                 studies: dict | None = None) -> Path:
    """Write REPORT.md, results.json, samples.md and the plots into `out`; returns REPORT.md's path. studies:
    {study: {point: (target, evaluation)}} of the opt-in studies run (compare.py --studies), each a section."""
    runs = {t.name: load_run(t, evaluations[t.name], config) for t in targets}
    twin_free = twin_free_set(config)
    h = {**header(runs, config, context), "twin_free": {k: twin_free[k] for k in ("n", "of", "per_operation")}}
    rows = {name: row(run, twin_free) for name, run in runs.items()}
    diversity = diversity_rows(runs)
    claims = check_claims(runs, config["convergence_fraction"])
    facts = notes(runs)
    plots = plot(out, runs)
    (out / "samples.md").write_text(samples_markdown(runs, config["num_report_samples"]))
    results = {"header": h, "runs": rows, "diversity": diversity, "claims": claims, "notes": facts, "plots": plots}
    markdown = report_markdown(h, rows, diversity, claims, facts, plots, config)
    if studies:
        results["studies"] = {name: study_results(out, name, {p: load_checkpoint(t, e, config)
                                                              for p, (t, e) in points.items()}, runs["base"], config)
                              for name, points in studies.items()}
        markdown += studies_markdown(results["studies"], config)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = out / "REPORT.md"
    report.write_text(markdown)
    return report


# ---- the opt-in studies (compare.py --studies; mathrl/studies.py) -----------------------------------------

def study_row(point: str, run: dict, config: dict) -> dict:
    """One line of a study's table (results.json's studies.<study>.points), from the run's files: its saved
    config (the settings it ran with), summary.json, metrics.jsonl and its evaluation."""
    saved, s, held = load_saved_config(Path(run["ckpt"])), run["summary"], run["held_out"]
    fraction = saved.get("train_fraction", 1.0)
    train = training_subset(load_jsonl(saved.get("train_file", config["train_file"])), fraction,
                            saved.get("seed", config["seed"]))
    return {
        "ckpt": run["ckpt"], "train_fraction": fraction, "train_examples": len(train),
        "learning_rate": saved.get("learning_rate"), "kl_coeff": saved.get("kl_coeff"),
        "kl_estimator": saved.get("kl_estimator") if "kl_coeff" in saved else None,
        "held_out_accuracy": held["accuracy"], "held_out_n": held["num_examples"],
        "held_out_se": binomial_se(held["accuracy"], held["num_examples"]),
        "mean_completion_tokens": held["mean_completion_tokens"],
        "kl_sequence_last": last_mean(run["metrics"], "kl_sequence"),
        "steps": s.get("step"), "epochs": judge.epochs_trained(run["metrics"]),
        "train_seconds": s.get("train_seconds"),
    }


def study_verdicts(name: str, points: dict, base: dict) -> list[dict]:
    """The study's comparisons (mathrl/claims.py), each {runs, verdict, evidence, ...}."""
    if name == "data_efficiency":
        return [judge.data_efficiency(points, base, f) for f in (0.1, 0.3)]
    if name == "sensitivity":
        return judge.sensitivity(points, base, [lr_name(f) for f in LR_FACTORS])
    if name == "kl_estimator":
        return [judge.kl_estimator(points, f"sft_grpo_{PAPER_KL_ESTIMATOR}")]
    longest = steps_name(SFT_STEP_SHARES[-1])
    return [judge.extended_sft(points, steps_name(share), longest) for share in SFT_STEP_SHARES[:-1]]


def study_plot(out: Path, name: str, rows: dict, base: dict, points: dict) -> str:
    """The study's figure (one PNG in `out`); returns its file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def with_error(ax, xs, names, label, **style):
        ax.errorbar(xs, [rows[n]["held_out_accuracy"] for n in names],
                    yerr=[2 * rows[n]["held_out_se"] for n in names], marker="o", capsize=3, label=label, **style)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhline(base["held_out"]["accuracy"], color="gray", linestyle="--", label="base (untrained)")
    if name == "data_efficiency":
        fractions = sorted({r["train_fraction"] for r in rows.values()})
        for method in ("sft", "grpo"):
            with_error(ax, [f * 100 for f in fractions], [f"{method}_{f:.0%}".replace("%", "pct") for f in fractions],
                       method)
        ax.set(xscale="log", xlabel="training prompts (% of train_file, log scale)", xticks=[10, 30, 100],
               xticklabels=["10", "30", "100"], title="Held-out accuracy vs share of the training prompts")
        ax.minorticks_off()  # only the points' own ticks on the log axis
    elif name == "extended_sft":
        names = [steps_name(share) for share in SFT_STEP_SHARES]
        xs = [rows[n]["epochs"] for n in names]  # train_sft.py logs "epoch" with every record
        with_error(ax, xs, names, "sft")
        ax.set(xscale="log", xlabel="SFT epochs (log scale)", xticks=xs, xticklabels=[f"{x:g}" for x in xs],
               title="Held-out accuracy and answer length vs SFT length")
        ax.minorticks_off()
        tokens_ax = ax.twinx()
        tokens_ax.plot(xs, [rows[n]["mean_completion_tokens"] for n in names], color="tab:orange", marker="s",
                       linestyle=":", label="mean completion tokens (right axis)")
        tokens_ax.set(ylabel="mean completion tokens (held-out, greedy)")
        tokens_ax.legend(loc="lower right")
    elif name == "sensitivity":
        for label, names in (("sft", [f"sft_lr_{lr_name(f)}" for f in LR_FACTORS]),
                             ("grpo, configured kl_coeff", [f"grpo_lr_{lr_name(f)}" for f in LR_FACTORS]),
                             ("grpo, kl_coeff 0", [f"grpo_lr_{lr_name(f)}_kl0" for f in LR_FACTORS])):
            with_error(ax, list(LR_FACTORS), names, label)
        ax.set(xscale="log", xlabel="learning rate / the configured one (log scale)", xticks=list(LR_FACTORS),
               xticklabels=["1/3", "1", "3"], title="Final held-out accuracy vs learning rate")
        ax.minorticks_off()
    else:
        plt.close(fig)
        fig, (ax, kl_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
        ax.axhline(base["held_out"]["accuracy"], color="gray", linestyle="--", label="base (untrained)")
        names = list(rows)
        ax.bar(range(len(names)), [rows[n]["held_out_accuracy"] for n in names],
               yerr=[2 * rows[n]["held_out_se"] for n in names], capsize=4)
        ax.set(xticks=range(len(names)), xticklabels=[f"{n}\n({rows[n]['kl_estimator']})" for n in names],
               title="Held-out accuracy of SFT -> GRPO by KL estimator")
        for n in names:
            steps = [(r["step"], r["kl_sequence"]) for r in points[n]["metrics"] if "kl_sequence" in r]
            kl_ax.plot([x for x, _ in steps], [y for _, y in steps], label=f"{n} ({rows[n]['kl_estimator']})")
        kl_ax.set(title="(sum log pi - sum log ref)^2 per completion (kl_sequence)", xlabel="step")
        kl_ax.legend()
    ax.set(ylabel="held-out greedy accuracy (error bars: 2 SE)", ylim=(-0.02, 1.02))
    ax.legend(loc="upper left" if name == "extended_sft" else "best")  # clear of the length curve's points
    fig.tight_layout()
    file = f"study_{name}.png"
    fig.savefig(out / file, dpi=110)
    plt.close(fig)
    return file


def study_results(out: Path, name: str, points: dict, base: dict, config: dict) -> dict:
    """A study's numbers for results.json: its points' rows, its verdicts, the spreads (sensitivity) and its plot."""
    rows = {point: study_row(point, run, config) for point, run in points.items()}
    result = {"section": STUDY_BY_NAME[name].section, "claim": STUDY_BY_NAME[name].claim,
              "step_fraction": config["study_step_fraction"], "points": rows,
              "verdicts": study_verdicts(name, points, base), "base_accuracy": base["held_out"]["accuracy"]}
    if name == "sensitivity":
        groups = {"sft": [f"sft_lr_{lr_name(f)}" for f in LR_FACTORS],
                  "grpo (configured kl_coeff)": [f"grpo_lr_{lr_name(f)}" for f in LR_FACTORS],
                  "grpo (kl_coeff 0)": [f"grpo_lr_{lr_name(f)}_kl0" for f in LR_FACTORS]}
        groups["grpo (all 6 settings)"] = groups["grpo (configured kl_coeff)"] + groups["grpo (kl_coeff 0)"]
        result["spreads"] = {g: judge.accuracy_spread([points[n] for n in names]) for g, names in groups.items()}
    result["plot"] = study_plot(out, name, rows, base, points)
    return result


def study_table(rows: dict) -> str:
    lines = ["| point | checkpoint | train prompts | learning rate | kl_coeff | kl_estimator | held-out acc ± SE (n) | "
             "mean tokens | KL (seq.)² | steps | epochs | train s |", "|" + "---|" * 12]
    for point, r in rows.items():
        lines.append(f"| {point} | `{r['ckpt']}` | {r['train_examples']} ({r['train_fraction']:.0%}) | "
                     f"{fmt(r['learning_rate'], '.3g')} | {fmt(r['kl_coeff'], 'g')} | {fmt(r['kl_estimator'])} | "
                     f"{with_se(r['held_out_accuracy'], r['held_out_se'], r['held_out_n'])} | "
                     f"{r['mean_completion_tokens']:.2f} | {fmt(r['kl_sequence_last'], '.4f')} | {fmt(r['steps'])} | "
                     f"{fmt(r['epochs'], 'g')} | {fmt(r['train_seconds'], '.1f')} |")
    return "\n".join(lines)


def studies_markdown(studies: dict, config: dict) -> str:
    """REPORT.md's "Studies" section: per study a table, its plot and its verdicts."""
    lines = ["", "## Studies (opt-in: compare.py --studies)", "",
             "Each point is one run; a checkpoint outside studies/ is the main run of that name, reused. Greedy "
             "held-out accuracy (no sampled completions). ² KL (seq.): the squared sequence log-ratio to the "
             "reference, (sum_t log pi - sum_t log ref)², mean of the last 10 logged steps (GRPO; kl_sequence in "
             "metrics.jsonl), comparable whatever kl_estimator trained it. Verdicts: differences within 2 SE are "
             "\"inconclusive\" (mathrl/claims.py). docs/STUDIES.md says what each study runs.", ""]
    fraction = config["study_step_fraction"]
    if fraction < 1:
        lines += [f"Every study run trained for {fraction:g} x the main runs' steps (study_step_fraction), the "
                  "points with the main runs' settings included: they were rerun at that budget, not reused.", ""]
    for name, study in studies.items():
        lines += [f"### {name} (paper {study['section']}): {study['claim']}", "", study_table(study["points"]), ""]
        for group, spread in study.get("spreads", {}).items():
            lines.append(f"- {group}: final held-out accuracy range (max - min) {spread['range']:.3f} ± "
                         f"{spread['range_se']:.3f}, std {spread['std']:.3f} over {spread['settings']} settings")
        if "spreads" in study:
            lines.append("")
        lines += [f"- {x['runs']}: **{x['verdict']}** ({x['evidence']})" for x in study["verdicts"]]
        lines += ["", f"![{study['plot']}]({study['plot']})", ""]
    return "\n".join(lines)


# ---- across seeds (compare.py --seeds N) ------------------------------------------------------------------

ACCURACIES = ("held_out", "twin_free", "ood")


def seeds_row(rows: list[dict]) -> dict:
    """One run's line across seeds (its results.json rows, one per seed): per accuracy the mean over seeds, the
    seed std (sample std, N - 1) and the binomial SE of the mean accuracy on the n problems every seed answers."""
    line = {"description": rows[0]["description"]}
    for key in ACCURACIES:
        values, n = [r[f"{key}_accuracy"] for r in rows], rows[0][f"{key}_n"]
        mean, std = mean_and_std(values) if None not in values else (None, None)
        line.update({f"{key}_mean": mean, f"{key}_std": std, f"{key}_n": n, f"{key}_per_seed": values,
                     f"{key}_se": binomial_se(mean, n) if mean is not None else None})
    line["per_operation"] = {op: mean_and_std([r["per_operation"][op] for r in rows])[0] for op in OPS
                             if all(op in r["per_operation"] for r in rows)}
    line["mean_completion_tokens"] = mean_and_std([r["mean_completion_tokens"] for r in rows])[0]
    for key in ("steps", "train_seconds"):
        values = [r[key] for r in rows]
        line[key], line[f"{key}_std"] = mean_and_std(values) if None not in values else (None, None)
    return line


def seeds_table(rows: dict) -> str:
    def cell(r: dict, key: str) -> str:
        if r[f"{key}_mean"] is None:
            return "-"
        return f"{r[f'{key}_mean']:.3f} ± {r[f'{key}_std']:.3f} (SE {r[f'{key}_se']:.3f}, n={r[f'{key}_n']})"

    lines = ["| run | held-out acc | twin-free held-out acc¹ | OOD acc | " + " | ".join(OPS)
             + " | mean tokens | steps | train s |"]
    lines.append("|" + "---|" * (lines[0].count("|") - 1))
    for name, r in rows.items():
        ops = " | ".join(fmt(r["per_operation"].get(op), ".2f") for op in OPS)
        seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f} ± {r['train_seconds_std']:.1f}"
        lines.append(f"| {name} | {cell(r, 'held_out')} | {cell(r, 'twin_free')} | {cell(r, 'ood')} | {ops} | "
                     f"{r['mean_completion_tokens']:.2f} | {fmt(r['steps'], '.0f')} | {seconds} |")
    return "\n".join(lines)


def seeds_markdown(h: dict, rows: dict, claims: list[dict], facts: list[str]) -> str:
    data = ", ".join(f"{k} {v['examples']} ({v['file']})" for k, v in h["data"].items())
    lines = ["# SFT vs GRPO vs SFT -> GRPO: results over seeds", ""]
    if h["builtin_model"]:
        lines += [f"> **Not a TinyLlama result.** These numbers come from {h['model']}, not from "
                  "TinyLlama-1.1B-Chat as in the paper.", ""]
    lines += [f"- model: {h['model']}", f"- data: {data}",
              f"- seeds: {', '.join(map(str, h['seeds']))}, each a whole experiment in seed-<seed>/ with its own "
              "REPORT.md (" + ", ".join(f"[{s}](seed-{s}/REPORT.md)" for s in h["seeds"]) + ")",
              f"- machine: {h['cpu']}; training device: {h['training_device']}; torch threads: {h['torch_threads']}; "
              f"OMP_NUM_THREADS: {h['omp_num_threads']}; runs at a time: {h['parallel_runs']}",
              f"- date: {h['date']}; total wall time of the runs: {h['runs_wall_time_s']:.0f} s; this compare.py "
              f"invocation: {h['invocation_seconds']:.0f} s",
              f"- command: `{h['command']}`", ""]
    lines += ["## Results (the paper's table, over seeds)", "",
              "Greedy decoding. Each accuracy: mean over the seeds ± their sample standard deviation (N - 1), then "
              "the binomial standard error sqrt(p(1-p)/n) of the mean accuracy p (every seed answers the same n "
              "problems, so averaging seeds does not shrink it). Per-operation columns, mean tokens, steps: means "
              "over seeds; train s: mean ± seed std.", "", seeds_table(rows), "", twin_footnote(h["twin_free"]), ""]
    lines += ["## The paper's claims, checked over seeds", "",
              "A difference is judged by its mean over seeds against the larger of two uncertainties: the seed std "
              "of the difference (its sample std over seeds, each seed's run of one method against the same seed's "
              "of the other) and its sampling SE (binomial for accuracies, over prompts for diversity and lengths; "
              "root mean square over seeds). Within 2 of it the verdict is \"inconclusive\". A claim that is not a "
              "difference (convergence, stability, cost, memory) holds across seeds only when every seed's verdict "
              "agrees (mathrl/claims.py: seed_aggregate, aggregate_comparison). Each line says what it was judged "
              "against.",
              ""]
    for c in claims:
        parts = [f"{x['runs']}: **{x['verdict']}**, judged against the {x['used']} ({x['evidence']})"
                 if x["used"] != "seed agreement" else
                 f"{x['runs']}: **{x['verdict']}**, judged by seed agreement ({x['evidence']})"
                 for x in c["comparisons"]]
        lines.append(f"- **({c['id']}) {c['claim']}**: " + "; ".join(parts))
    lines.append("")
    if facts:
        lines += ["## Notes", ""] + [f"- {f}" for f in facts] + [""]
    return "\n".join(lines)


def write_seeds_report(out: Path, seed_dirs: dict[int, Path], context: dict) -> Path:
    """REPORT.md and results.json in `out` from each seed's results.json ({seed: its experiment's directory});
    returns REPORT.md's path."""
    per_seed = {s: json.loads((d / "results.json").read_text()) for s, d in seed_dirs.items()}
    headers = [r["header"] for r in per_seed.values()]
    first = headers[0]
    h = {**{k: first[k] for k in ("model", "builtin_model", "data", "cpu", "omp_num_threads", "twin_free")},
         "seeds": list(per_seed), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
         "training_device": ", ".join(sorted({d for x in headers for d in x["training_device"].split(", ")})),
         "torch_threads": ", ".join(sorted({t for x in headers for t in x["torch_threads"].split(", ")})),
         "runs_wall_time_s": sum(x["runs_wall_time_s"] for x in headers), **context}
    names = next(iter(per_seed.values()))["runs"]
    rows = {name: seeds_row([r["runs"][name] for r in per_seed.values()]) for name in names}
    claims = aggregate_claims({s: r["claims"] for s, r in per_seed.items()})
    facts = [f"seed {s}: {fact}" for s, r in per_seed.items() for fact in r["notes"]]
    results = {"header": h, "runs": rows, "claims": claims, "notes": facts,
               "per_seed": {s: str(d / "results.json") for s, d in seed_dirs.items()}}
    markdown = seeds_markdown(h, rows, claims, facts)
    if all("studies" in r for r in per_seed.values()):
        results["studies"] = seeds_studies({s: r["studies"] for s, r in per_seed.items()})
        markdown += seeds_studies_markdown(results["studies"], list(per_seed))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = out / "REPORT.md"
    report.write_text(markdown)
    return report


def seeds_studies(by_seed: dict[int, dict]) -> dict:
    """Each study's verdicts judged across seeds (`aggregate_comparison`, as the claims); {study: [comparison]}."""
    first = next(iter(by_seed.values()))
    return {name: [aggregate_comparison({s: studies[name]["verdicts"][j] for s, studies in by_seed.items()})
                   for j in range(len(study["verdicts"]))] for name, study in first.items()}


def seeds_studies_markdown(studies: dict, seeds: list[int]) -> str:
    lines = ["", "## Studies over seeds (opt-in: compare.py --studies)", "",
             "Each study's verdicts judged across seeds as the claims above; each seed's tables and plots are in its "
             "REPORT.md (" + ", ".join(f"[{s}](seed-{s}/REPORT.md)" for s in seeds) + ").", ""]
    for name, comparisons in studies.items():
        lines += [f"- **{name}**: " + "; ".join(f"{x['runs']}: **{x['verdict']}**, judged against the {x['used']} "
                                                f"({x['evidence']})" if x["used"] != "seed agreement" else
                                                f"{x['runs']}: **{x['verdict']}**, judged by seed agreement "
                                                f"({x['evidence']})" for x in comparisons)]
    return "\n".join([*lines, ""])
