"""Arithmetic datasets: the repo's JSONL reading (data files validated, run records as they are) and a seeded
generator for every file in data/.

Line format follows the paper (section 3.1.2, Appendix A.2):
    {"prompt": "What is 15 + 27? Answer with an integer.", "answer": "42"}
Generated lines also carry "operation", "a" and "b" so answers can be re-checked and accuracy split by
operation; the loader keeps such extra keys untouched.

How this departs from the paper:
- The paper lists "50+" training and "20+" evaluation problems over +, - and *, while its Appendix A.2
  sample also has division. We generate 400 / 100 problems (math_tasks_train / math_tasks_eval) over all
  four operations, 100 + 25 per operation, so per-operation accuracy rests on more than a handful of items.
  Ranges: + and - take operands 0-99 (a >= b for -, so no negative answers); * has one operand 0-12 and
  the other 0-99 (either order); / is exact, divisor 1-12 and quotient 0-99 (so 144 / 12 is possible).
- For models smaller than TinyLlama we add tiny_* sets drawn from a small closed pool: + and - with
  operands 0-30 (a >= b for -), * with operands 0-12, / with divisor 1-12 and quotient 0-12. About 20% of
  each operation is held out as tiny_eval; the rest is tiny_train. A held-out problem should be
  answerable from what training can teach: + and - through the carry/borrow rule, but a multiplication
  fact never shown in any form cannot be inferred. So held-out * and / problems are drawn only among those
  whose twin stays in training (b * a for a * b; a / q for a / b = q): held-out * and / accuracy measures
  whether the model learned the symmetry, not whether it can guess an unseen fact. (With a plain random
  split, a 1M-parameter model trained to near-zero train loss scored 35% on held-out * and 42% on /.)
  The +/- range is 0-30 rather than 0-20 because the tiny model generalises the carry rule only when
  memorising the training problems is not enough: with 0-20 (353 training additions) it plateaued near 70%
  held-out, with 0-30 (769) it passed 85% in the same number of steps.
- tiny_ood holds two shifts, labelled by its "ood" key:
  "operands": standard phrasing, operands outside the pool (+ / - with an operand 31-50, * with an
  operand 13-15, / with quotient 13-15);
  "phrasing": other wordings ("Compute 17 - 6.", "What is 9 plus 3?", "7 × 8 = ?") of problems taken from
  tiny_eval. We take them from the eval pairs, not the train pairs, so that phrasing is the only thing
  that differs from tiny_eval: a model could answer a rephrased *training* problem by recalling the
  memorised answer, which would hide whether it computes under the new wording; and accuracy on these
  items compares one to one with accuracy on the same (a, op, b) in tiny_eval.
- tiny_reasoning_{train,eval,ood} are tiny_{train,eval,ood} line for line (same problems, prompts and integer
  "answer") plus a "solution" key: a worked solution of varied verbosity ending in "#### N"
  (mathrl/worked_solutions.py; the style of each line drawn from its own seeded generator, so the tiny files
  stay as they were). SFT trains on it with `sft_target: solution` (configs/tiny_reasoning.yaml).

Within each family, eval and train share no (a, op, b) triple, and no eval or OOD prompt string equals a
train prompt string. Every file is a pure function of the seed: one random.Random per file family, pools
enumerated in a fixed order, lines written in a fixed order; `python -m mathrl.data` regenerates them.
"""

import argparse
import json
import random
import re
from pathlib import Path

from mathrl.errors import UserError, run_cli
from mathrl.worked_solutions import draw_style, worked_solution

OPS = ("+", "-", "*", "/")

# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------

# ASCII digits only: Python's int() would also take "1_000" and non-ASCII digits, which no answer should be.
_INT_STRING = re.compile(r"[+-]?[0-9]+")

_JSON_TYPE_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number",
                    bool: "a boolean", type(None): "null"}


def _show(value: object, limit: int = 40) -> str:
    """A value as it would look in the file, shortened so the error stays one readable line."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalise_answer(value: object) -> str | None:
    """The answer as the paper's integer string ("-3", "42"), or None when it is not an integer."""
    # bool is a subclass of int in Python, but `true` in a data file is a mistake, not the answer 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and _INT_STRING.fullmatch(value.strip()):
        return str(int(value))  # "+7" and "007" become "7", so string comparison of answers is exact
    return None


def _parse_line(line: str, where: str) -> dict:
    """One non-blank JSONL line -> a validated example with a normalised answer."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {_JSON_TYPE_NAMES.get(type(obj), 'a value')}")
    for key in ("prompt", "answer"):
        if key not in obj:
            raise UserError(f'{where}: missing key "{key}"')
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f'{where}: "prompt" must be a non-empty string, got {_show(prompt)}')
    answer = normalise_answer(obj["answer"])
    if answer is None:
        raise UserError(f'{where}: "answer" must be an integer, got {_show(obj["answer"])}')
    return {**obj, "answer": answer}  # same key order, everything but the answer untouched


def load_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file of {"prompt", "answer", ...} examples; any problem is a one-line UserError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    examples = [
        _parse_line(line, f"{path} line {n}")
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip()  # blank lines (often a trailing one) are not examples
    ]
    if not examples:
        raise UserError(f"{path}: no examples (empty file)")
    return examples


def training_subset(examples: list[dict], fraction: float, seed: int) -> list[dict]:
    """The share `fraction` of the training examples that a run with train_fraction trains on (compare.py's
    data_efficiency study): the first max(1, round(fraction * n)) indices of one permutation seeded by `seed`, in
    file order. So a subset is the same for a seed every time, and a smaller fraction's subset lies inside a larger
    one's (10 % within 30 %). fraction 1: every example, as read."""
    if fraction >= 1:
        return list(examples)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)  # one permutation per seed, whatever the fraction: the subsets nest
    keep = sorted(order[:max(1, round(fraction * len(examples)))])
    return [examples[i] for i in keep]


def read_jsonl(path: str | Path) -> list[dict]:
    """Every non-blank line of a JSONL file the repo wrote itself (metrics, samples, predictions), unvalidated."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------------------

# Every spelling of an operation that our prompts (standard and OOD phrasings) or a hand-written file use.
_OP_ALIASES = {
    "+": "+", "plus": "+",
    "-": "-", "−": "-", "minus": "-",
    "*": "*", "x": "*", "×": "*", "times": "*", "multiplied by": "*",
    "/": "/", "÷": "/", "divided by": "/",
}
# Longest alternatives first so "multiplied by" is not cut short; any run of spaces may separate the words
# of "divided by". The operands around the operator are required so that the "x" or "-" inside ordinary
# words never counts.
_OP_WORDS = "|".join(
    r"\s+".join(map(re.escape, k.split())) for k in sorted(_OP_ALIASES, key=len, reverse=True)
)
_OP_PATTERN = re.compile(r"\d+\s*(" + _OP_WORDS + r")\s*-?\d+", re.IGNORECASE)


def operation_of(example: dict) -> str:
    """The example's operation as "+", "-", "*" or "/"; "?" if unknown.

    Its "operation" key wins when present; otherwise the operation is parsed from the prompt.
    """
    if "operation" in example:
        return _OP_ALIASES.get(str(example["operation"]).strip().lower(), "?")
    match = _OP_PATTERN.search(str(example.get("prompt", "")))
    if match is None:
        return "?"
    # Collapse inner whitespace so "divided  by" still maps to "/".
    return _OP_ALIASES.get(" ".join(match.group(1).lower().split()), "?")


def apply_op(a: int, op: str, b: int) -> int:
    """The exact integer answer; division must divide evenly, since every answer is an integer."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{a} / {b} is not an exact integer division")
        return a // b
    raise ValueError(f"unknown operation {op!r}")


# ---------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------

Pair = tuple[int, int]


def standard_prompt(a: int, op: str, b: int) -> str:
    """The paper's prompt, character for character."""
    return f"What is {a} {op} {b}? Answer with an integer."


# How each operation is written: its ASCII sign, its word and its typeset sign (also used by mathrl/tiny_base.py's
# pretraining corpus).
ASCII_SIGNS = {op: op for op in OPS}
OPERATION_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
TYPESET_SIGNS = {"+": "+", "-": "-", "*": "×", "/": "÷"}
# OOD phrasings: (name, template, how each operation is written in it).
PHRASINGS = (
    ("compute", "Compute {a} {op} {b}.", ASCII_SIGNS),
    ("calculate", "Calculate {a} {op} {b}.", ASCII_SIGNS),
    ("words", "What is {a} {op} {b}?", OPERATION_WORDS),
    ("equation", "{a} {op} {b} = ?", TYPESET_SIGNS),
)


def make_example(a: int, op: str, b: int, prompt: str | None = None, **extra: object) -> dict:
    """One dataset line; the prompt defaults to the standard phrasing."""
    return {"prompt": prompt or standard_prompt(a, op, b), "answer": str(apply_op(a, op, b)),
            "operation": op, "a": a, "b": b, **extra}


def _both_orders(pairs: list[Pair]) -> list[Pair]:
    """Pairs plus their swaps, deduplicated, in sorted order (so 7 * 40 and 40 * 7 both occur)."""
    return sorted({p for a, b in pairs for p in ((a, b), (b, a))})


def paper_pools() -> dict[str, list[Pair]]:
    """All (a, b) per operation for the TinyLlama sets (single- and double-digit operands)."""
    return {
        "+": [(a, b) for a in range(100) for b in range(100)],
        "-": [(a, b) for a in range(100) for b in range(a + 1)],
        "*": _both_orders([(a, b) for a in range(100) for b in range(13)]),
        "/": [(b * q, b) for b in range(1, 13) for q in range(100)],
    }


def tiny_pools() -> dict[str, list[Pair]]:
    """All (a, b) per operation for the tiny-model sets; every one lands in tiny_train or tiny_eval."""
    return {
        "+": [(a, b) for a in range(31) for b in range(31)],
        "-": [(a, b) for a in range(31) for b in range(a + 1)],
        "*": [(a, b) for a in range(13) for b in range(13)],
        "/": [(b * q, b) for b in range(1, 13) for q in range(13)],
    }


def tiny_ood_operand_pools() -> dict[str, list[Pair]]:
    """(a, b) just outside the tiny pools, so every one is new to a model trained on tiny_train."""
    return {
        "+": [(a, b) for a in range(51) for b in range(51) if max(a, b) >= 31],
        "-": [(a, b) for a in range(31, 51) for b in range(a + 1)],
        "*": _both_orders([(a, b) for a in range(13, 16) for b in range(13)]),
        "/": [(b * q, b) for b in range(1, 13) for q in range(13, 16)],
    }


def twin(op: str, pair: Pair) -> Pair | None:
    """The other problem that states the same fact (None if none): b + a for a + b, a - c for a - b = c, b * a
    for a * b, a / q for a / b = q."""
    a, b = pair
    if op in ("+", "*") and a != b:
        return (b, a)
    if op == "-" and a - b != b:
        return (a, a - b)
    if op == "/" and b != 0 and a // b not in (0, b):
        return (a, a // b)
    return None


# The operands around an operator in a prompt without "a" / "b" keys (a hand-written file).
_PROBLEM_PATTERN = re.compile(r"(\d+)\s*(?:" + _OP_WORDS + r")\s*(\d+)", re.IGNORECASE)


def has_trained_twin(examples: list[dict], train: list[dict]) -> list[bool]:
    """Per example: is its twin (see `twin`) a problem of `train`? Such a held-out problem can be answered by
    recalling the trained fact instead of computing it. An example's problem is its "a", "operation" and "b"
    keys, or else read from its prompt; one whose problem cannot be read has no known twin (False)."""
    def problem(example: dict) -> tuple[int, str, int] | None:
        if "a" in example and "b" in example:
            return int(example["a"]), operation_of(example), int(example["b"])
        match = _PROBLEM_PATTERN.search(str(example.get("prompt", "")))
        return (int(match.group(1)), operation_of(example), int(match.group(2))) if match else None

    trained = {problem(ex) for ex in train}
    flags = []
    for example in examples:
        p = problem(example)
        other = twin(p[1], (p[0], p[2])) if p else None
        flags.append(other is not None and (other[0], p[1], other[1]) in trained)
    return flags


def _draw_with_twins_in_train(pool: list[Pair], op: str, rng: random.Random, k: int) -> list[Pair]:
    """k pairs from pool, each with its twin in pool, never two members of one twin class."""
    members = set(pool)
    classes = sorted({tuple(sorted((p, twin(op, p)))) for p in pool if twin(op, p) in members})
    if k > len(classes):
        raise ValueError(f"cannot hold out {k} '{op}' problems with twins in training ({len(classes)} classes)")
    return [rng.choice(cls) for cls in rng.sample(classes, k)]


def split_pairs(
    pools: dict[str, list[Pair]],
    rng: random.Random,
    n_eval: dict[str, int],
    n_train: dict[str, int] | None = None,
    eval_needs_twin: tuple[str, ...] = (),
) -> tuple[list[dict], list[dict]]:
    """Stratified split: per operation, n_eval pairs to eval and n_train (default: all the rest) to train.

    Pairs are drawn without replacement, so train and eval never share an (a, op, b); since the standard
    prompt is a function of (a, op, b), they share no prompt string either. For operations listed in
    eval_needs_twin, eval pairs are drawn among those whose twin (see `twin`) stays in train.
    """
    train, evals = [], []
    for op in OPS:
        pool = pools[op]
        k_train = len(pool) - n_eval[op] if n_train is None else n_train[op]
        if op in eval_needs_twin:
            held = _draw_with_twins_in_train(pool, op, rng, n_eval[op])
            rest = [p for p in pool if p not in set(held)]
            drawn = held + rng.sample(rest, k_train)
        else:
            drawn = rng.sample(pool, n_eval[op] + k_train)
        evals += [make_example(a, op, b) for a, b in drawn[: n_eval[op]]]
        train += [make_example(a, op, b) for a, b in drawn[n_eval[op]:]]
    # Mix operations so a file read top to bottom (or a loader that does not shuffle) is not blocked by op.
    rng.shuffle(train)
    rng.shuffle(evals)
    return train, evals


def tiny_ood(tiny_eval: list[dict], rng: random.Random, per_op: int = 25) -> list[dict]:
    """per_op operand-shift and per_op phrasing-shift problems per operation (see the module docstring)."""
    operands = []
    for op in OPS:
        for a, b in rng.sample(tiny_ood_operand_pools()[op], per_op):
            operands.append(make_example(a, op, b, ood="operands"))
    phrased = []
    for op in OPS:
        chosen = rng.sample([ex for ex in tiny_eval if ex["operation"] == op], per_op)
        for i, ex in enumerate(chosen):
            # Cycle through the phrasings so each one gets about the same number of problems per operation.
            name, template, spell = PHRASINGS[i % len(PHRASINGS)]
            prompt = template.format(a=ex["a"], op=spell[op], b=ex["b"])
            phrased.append(
                make_example(ex["a"], op, ex["b"], prompt=prompt, ood="phrasing", phrasing=name)
            )
    rng.shuffle(operands)
    rng.shuffle(phrased)
    return operands + phrased


def with_solutions(examples: list[dict], rng: random.Random) -> list[dict]:
    """The examples, each with a "solution" key: its worked solution in a style drawn from rng."""
    return [{**ex, "solution": worked_solution(ex["a"], ex["operation"], ex["b"], int(ex["answer"]), draw_style(rng))}
            for ex in examples]


def _tiny_eval_counts(pools: dict[str, list[Pair]], fraction: float = 0.2) -> dict[str, int]:
    return {op: round(fraction * len(pool)) for op, pool in pools.items()}


def build_datasets(seed: int = 0) -> dict[str, list[dict]]:
    """Every data file's lines, keyed by file name; a pure function of the seed."""
    # One generator per family (string seeds are hashed with SHA-512, stable across runs and platforms),
    # so resizing the paper sets does not reshuffle the tiny split, and vice versa.
    paper_rng = random.Random(f"paper:{seed}")
    tiny_rng = random.Random(f"tiny:{seed}")

    paper_train, paper_eval = split_pairs(paper_pools(), paper_rng,
                                          n_eval=dict.fromkeys(OPS, 25), n_train=dict.fromkeys(OPS, 100))
    pools = tiny_pools()
    small_train, small_eval = split_pairs(pools, tiny_rng, n_eval=_tiny_eval_counts(pools),
                                          eval_needs_twin=("*", "/"))
    small_ood = tiny_ood(small_eval, tiny_rng)
    # Its own generator: drawing the solution styles leaves every earlier file unchanged.
    reasoning_rng = random.Random(f"reasoning:{seed}")
    return {
        "math_tasks_train.jsonl": paper_train,
        "math_tasks_eval.jsonl": paper_eval,
        "tiny_train.jsonl": small_train,
        "tiny_eval.jsonl": small_eval,
        "tiny_ood.jsonl": small_ood,
        "tiny_reasoning_train.jsonl": with_solutions(small_train, reasoning_rng),
        "tiny_reasoning_eval.jsonl": with_solutions(small_eval, reasoning_rng),
        "tiny_reasoning_ood.jsonl": with_solutions(small_ood, reasoning_rng),
    }


def write_jsonl(path: str | Path, examples: list[dict]) -> None:
    """One JSON object per line, UTF-8 (× and ÷ stay readable), "\\n" endings, final newline."""
    text = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples)
    try:
        Path(path).write_text(text, encoding="utf-8", newline="\n")
    except OSError as err:
        raise UserError(f"{path}: cannot write ({err.strerror})") from None


def write_datasets(out_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """Write every data file into out_dir; returns {file name: number of problems}."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: cannot create directory ({err.strerror})") from None
    counts = {}
    for name, examples in build_datasets(seed).items():
        write_jsonl(out / name, examples)
        counts[name] = len(examples)
    return counts


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the arithmetic datasets in data/.")
    parser.add_argument("--out", default="data", help="output directory (default: data)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0, the committed files)")
    args = parser.parse_args()
    for name, count in write_datasets(args.out, seed=args.seed).items():
        print(f"{Path(args.out) / name}: {count} problems")


if __name__ == "__main__":
    run_cli(main)
