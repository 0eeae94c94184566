"""compare.py's opt-in studies (`--studies data_efficiency,sensitivity,kl_estimator,extended_sft`): the one list
of what each study runs. Planning (compare.py), the verdicts (mathrl/claims.py) and the report sections
(mathrl/report.py) loop over it.

A study is a set of points, each one run of train_sft.py or train_grpo.py that departs from a main run of
mathrl/runs.py in one or two settings:
  data_efficiency (paper 6.2.2, "GRPO can work with fewer examples"): SFT and GRPO from the base model on 10 % and
      30 % of the training prompts (train_fraction: a seeded subset, 10 % within 30 %), with the main runs' step
      budget; the 100 % points are the main sft and grpo runs.
  sensitivity (paper 5.1.2, GRPO is more sensitive to its learning rate and KL coefficient than SFT to its
      learning rate): SFT at 1/3, 1 and 3 x its learning rate; GRPO at the same factors of its own, each with the
      configured kl_coeff and with kl_coeff 0. The x1 points at the configured kl_coeff are the main sft and grpo
      runs.
  kl_estimator (paper 3.3.4): GRPO from sft/final (like sft_grpo) with the paper's KL, kl_estimator
      squared_sequence, beside the main sft_grpo run and its configured per-token estimator.
  extended_sft (the two-stage recipe's first finding, "extending SFT is what lifts accuracy"): SFT from the base
      model for 1/10 and 3/10 of the main SFT run's optimizer steps, each a whole run with the same schedule
      shrunk to fit (warmup_steps times the same share, its own cosine decay); the full budget is the main sft
      run. configs/tiny_reasoning.yaml's SFT runs 10 epochs, so these are its 1, 3 and 10 epochs.

Each point's run lives in OUTPUT_DIR/studies/<study>/<point>/, except a point that is a main run (`main_run`): it
is that run, reused. With compare's study_step_fraction below 1 every point (those too) is run in the study's
directory at that fraction of the main runs' steps, so the points of a study always share one step budget.

How this departs from the paper: the paper runs none of these; they test sentences of its sections 5-6 and the
loss it writes in 3.3.4. The alternative KL coefficient is 0 (no KL term, and no reference model: the common
ablation, and the cheaper run on a 2-core CPU) rather than a larger one.
"""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.errors import UserError
from mathrl.runs import GRPO_SCRIPT, SFT_SCRIPT

LR_FACTORS = (1 / 3, 1.0, 3.0)
DATA_FRACTIONS = (0.1, 0.3, 1.0)
SFT_STEP_SHARES = (0.1, 0.3, 1.0)  # extended_sft: shares of the main SFT run's steps (1, 3, 10 of 10 epochs)
PAPER_KL_ESTIMATOR = "squared_sequence"  # (sum_t log pi - sum_t log ref)^2 per completion: section 3.3.4


@dataclass(frozen=True)
class Point:
    """One run of a study: a main run's script and start with some settings changed."""
    name: str                         # its directory under OUTPUT_DIR/studies/<study>/
    method: str                       # "sft" or "grpo": the table's row group
    script: str
    starts_from: str | None = None    # a main run whose final/ it starts from; None: the base model
    train_fraction: float = 1.0       # share of the training prompts (train_fraction)
    step_share: float = 1.0           # share of the main run's optimizer steps
    lr_factor: float = 1.0            # times the script's configured learning_rate
    kl_off: bool = False              # kl_coeff 0 instead of the configured one (GRPO)
    kl_estimator: str | None = None   # None: the configured kl_estimator (GRPO)
    main_run: str | None = None       # the main run this point is (same settings): reused at the full step budget


@dataclass(frozen=True)
class Study:
    name: str
    section: str                      # the paper's section whose sentence it tests
    claim: str                        # that sentence, as the report's verdicts read it
    points: tuple[Point, ...]


def lr_name(factor: float) -> str:
    return "third" if factor < 1 else f"x{factor:g}"


def steps_name(share: float) -> str:
    """extended_sft's point names: sft_steps_10pct, sft_steps_30pct, sft_steps_100pct."""
    return f"sft_steps_{share:.0%}".replace("%", "pct")


STUDIES = (
    Study("data_efficiency", "6.2.2", "GRPO can work with fewer examples: it keeps more of its gain on less data",
          tuple(Point(f"{method}_{fraction:.0%}".replace("%", "pct"), method, script, train_fraction=fraction,
                      main_run=method if fraction == 1.0 else None)
                for method, script in (("sft", SFT_SCRIPT), ("grpo", GRPO_SCRIPT)) for fraction in DATA_FRACTIONS)),
    Study("sensitivity", "5.1.2", "GRPO is more sensitive to its learning rate and KL coefficient than SFT to its "
          "learning rate",
          (*(Point(f"sft_lr_{lr_name(f)}", "sft", SFT_SCRIPT, lr_factor=f, main_run="sft" if f == 1.0 else None)
             for f in LR_FACTORS),
           *(Point(f"grpo_lr_{lr_name(f)}{'_kl0' if off else ''}", "grpo", GRPO_SCRIPT, lr_factor=f, kl_off=off,
                   main_run="grpo" if f == 1.0 and not off else None)
             for off in (False, True) for f in LR_FACTORS))),
    Study("kl_estimator", "3.3.4", "GRPO after SFT with the paper's sequence-level KL (squared_sequence) is more "
          "accurate than with the configured per-token estimator",
          (Point("sft_grpo", "grpo", GRPO_SCRIPT, starts_from="sft", main_run="sft_grpo"),
           Point(f"sft_grpo_{PAPER_KL_ESTIMATOR}", "grpo", GRPO_SCRIPT, starts_from="sft",
                 kl_estimator=PAPER_KL_ESTIMATOR))),
    Study("extended_sft", "two-stage recipe", "Extending SFT lifts held-out accuracy: more epochs of SFT from the "
          "same base are more accurate",
          tuple(Point(steps_name(share), "sft", SFT_SCRIPT, step_share=share, main_run="sft" if share == 1.0 else None)
                for share in SFT_STEP_SHARES)),
)
BY_NAME = {study.name: study for study in STUDIES}


def parse_studies(text: str) -> list[str]:
    """--studies' comma list -> study names in STUDIES order; an unknown name is a UserError naming the valid ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UserError(f"--studies {','.join(unknown)}: unknown study; studies: {', '.join(BY_NAME)}")
    return [s.name for s in STUDIES if s.name in names]


def reused(point: Point, step_fraction: float) -> bool:
    """Whether the point is its main run, reused (at the full step budget only)."""
    return point.main_run is not None and step_fraction >= 1.0


def step_budget(total_steps: int, step_fraction: float, step_share: float = 1.0) -> int:
    """A study run's optimizer steps: the main run's, times study_step_fraction and the point's own step_share (at
    least 1)."""
    return max(1, round(total_steps * step_fraction * step_share))


def point_settings(point: Point, section: dict, total_steps: int, step_fraction: float) -> dict:
    """The config keys a point's run sets on top of the experiment's ({key: value}, in a fixed order).

    section: the resolved config of the point's script (its learning_rate, kl_coeff, kl_estimator); total_steps:
    the main run's optimizer steps for that script. SFT always gets max_steps, so a run on a smaller share of the
    data takes as many steps as the main run (not as many epochs)."""
    steps_key = "max_steps" if point.script == SFT_SCRIPT else "num_train_steps"
    settings = {steps_key: step_budget(total_steps, step_fraction, point.step_share)}
    if point.step_share != 1.0:  # a shorter run of the same schedule: its warmup shrinks with it
        settings["warmup_steps"] = round(section["warmup_steps"] * point.step_share)
    if point.train_fraction != 1.0:
        settings["train_fraction"] = point.train_fraction
    if point.lr_factor != 1.0:
        settings["learning_rate"] = section["learning_rate"] * point.lr_factor
    if point.kl_off:
        settings["kl_coeff"] = 0.0
    if point.kl_estimator is not None:
        settings["kl_estimator"] = point.kl_estimator
    return settings


def check_study_config(name: str, config: dict, grpo: dict) -> None:
    """A study whose comparison this experiment's settings would empty is a UserError, before anything runs.
    config: compare's resolved config; grpo: train_grpo.py's."""
    if name == "data_efficiency" and config["train_fraction"] != 1.0:
        raise UserError(f"--studies data_efficiency: its 100 % points are the main runs, but train_fraction is "
                        f"{config['train_fraction']:g}; run it with train_fraction 1.0")
    if name == "sensitivity" and grpo["kl_coeff"] == 0:
        raise UserError("--studies sensitivity: grpo's kl_coeff is 0, the same as the study's other KL "
                        "coefficient (0); set kl_coeff > 0")
    if name == "kl_estimator":
        if grpo["kl_estimator"] == PAPER_KL_ESTIMATOR:
            raise UserError(f"--studies kl_estimator: grpo's kl_estimator is already {PAPER_KL_ESTIMATOR}, the one "
                            "the study compares with the per-token estimator; set kl_estimator squared or k3")
        if grpo["kl_coeff"] == 0:
            raise UserError("--studies kl_estimator: grpo's kl_coeff is 0, so the KL estimator changes nothing; "
                            "set kl_coeff > 0")
