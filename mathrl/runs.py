"""The runs of compare.py's experiment, in table order: the one list that planning, evaluation, the report tables
and the plots loop over (mathrl/claims.py names the runs each claim compares).

Each entry says what the run is (its description in the report), which script trains it (None: nothing is
trained) and which entry's checkpoint it starts from (None: the base model). "warm_start" is not trained: it is
the SFT run's step_<warm_start_steps>/ checkpoint, the head-to-head's shared starting point. Two entries are
optional, each run only when its config key is above 0, both with the two-stage recipe's cosine length term:
"grpo_length" (grpo_length_reward_weight: GRPO from a verbose base, configs/smollm2.yaml) and "sft_grpo_length"
(sft_grpo_length_reward_weight: the recipe itself, GRPO after SFT on worked answers, configs/tiny_reasoning.yaml);
the plain grpo / sft_grpo runs are the same GRPO without the length term. `planned` gives the entries a config
runs.
"""

from __future__ import annotations

from dataclasses import dataclass

SFT_SCRIPT, GRPO_SCRIPT = "train_sft.py", "train_grpo.py"


@dataclass(frozen=True)
class RunSpec:
    name: str
    description: str
    script: str | None          # None: nothing to train (the base model, the warm start)
    starts_from: str | None     # the entry whose checkpoint it starts from; None: the base model


RUNS = (
    RunSpec("base", "the base model, untrained", None, None),
    RunSpec("sft", "SFT from the base model", SFT_SCRIPT, None),
    RunSpec("warm_start", "SFT checkpoint at warm_start_steps (head-to-head start)", None, "sft"),
    RunSpec("grpo", "GRPO from the base model", GRPO_SCRIPT, None),
    RunSpec("sft_grpo", "GRPO from sft/final (two-stage recipe)", GRPO_SCRIPT, "sft"),
    RunSpec("h2h_sft", "warm start + SFT for head_to_head_seconds", SFT_SCRIPT, "warm_start"),
    RunSpec("h2h_grpo", "warm start + GRPO for head_to_head_seconds", GRPO_SCRIPT, "warm_start"),
    RunSpec("grpo_length", "GRPO from the base model with the two-stage recipe's length term", GRPO_SCRIPT, None),
    RunSpec("sft_grpo_length", "GRPO from sft/final with the two-stage recipe's length term", GRPO_SCRIPT, "sft"),
)
# entry -> the config key (compare:) that turns it on when > 0, and is the length_reward_weight it trains with
OPTIONAL = {"grpo_length": "grpo_length_reward_weight", "sft_grpo_length": "sft_grpo_length_reward_weight"}
BY_NAME = {spec.name: spec for spec in RUNS}


def planned(config: dict) -> list[RunSpec]:
    """The entries this config runs, in table order: every one, less the optional ones its keys leave off."""
    # .get: a config written before the key existed (a kept run's, a hand-made one) has no optional runs
    return [spec for spec in RUNS if spec.name not in OPTIONAL or config.get(OPTIONAL[spec.name], 0) > 0]


def trained_by(script: str) -> list[str]:
    """Names of the runs a script trains, in table order."""
    return [spec.name for spec in RUNS if spec.script == script]
