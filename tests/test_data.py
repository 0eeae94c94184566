"""Tests for mathrl.data: the JSONL loader, operation_of, and the seeded dataset generator (CPU, offline)."""

from pathlib import Path

import pytest

from mathrl.data import (
    OPS, apply_op, build_datasets, has_trained_twin, load_jsonl, operation_of, standard_prompt, twin, write_datasets,
)
from mathrl.errors import UserError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
FILES = ("math_tasks_train.jsonl", "math_tasks_eval.jsonl", "tiny_train.jsonl", "tiny_eval.jsonl",
         "tiny_ood.jsonl", "tiny_reasoning_train.jsonl", "tiny_reasoning_eval.jsonl", "tiny_reasoning_ood.jsonl")


@pytest.fixture(scope="module")
def datasets() -> dict[str, list[dict]]:
    return build_datasets(seed=0)


def triples(examples: list[dict]) -> set[tuple[int, str, int]]:
    return {(ex["a"], ex["operation"], ex["b"]) for ex in examples}


def prompts(examples: list[dict]) -> set[str]:
    return {ex["prompt"] for ex in examples}


# ---------------------------------------------------------------------------------------------------------
# Generated datasets
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("train, held_out", [
    ("math_tasks_train.jsonl", "math_tasks_eval.jsonl"),
    ("tiny_train.jsonl", "tiny_eval.jsonl"),
])
def test_train_and_eval_are_disjoint(datasets, train, held_out):
    assert not triples(datasets[train]) & triples(datasets[held_out])
    assert not prompts(datasets[train]) & prompts(datasets[held_out])


def test_ood_prompts_are_not_training_prompts(datasets):
    assert not prompts(datasets["tiny_ood.jsonl"]) & prompts(datasets["tiny_train.jsonl"])


def test_ood_operand_problems_lie_outside_the_tiny_pool(datasets):
    in_pool = triples(datasets["tiny_train.jsonl"]) | triples(datasets["tiny_eval.jsonl"])
    operands = [ex for ex in datasets["tiny_ood.jsonl"] if ex["ood"] == "operands"]
    assert len(operands) == 100
    assert not triples(operands) & in_pool
    assert all(ex["prompt"] == standard_prompt(ex["a"], ex["operation"], ex["b"]) for ex in operands)


def test_ood_phrasing_problems_are_rephrased_eval_problems(datasets):
    # Phrasing is the only shift from tiny_eval: same (a, op, b), different wording, none from train.
    phrased = [ex for ex in datasets["tiny_ood.jsonl"] if ex["ood"] == "phrasing"]
    assert len(phrased) == 100
    assert triples(phrased) <= triples(datasets["tiny_eval.jsonl"])
    assert not prompts(phrased) & prompts(datasets["tiny_eval.jsonl"])
    assert {ex["phrasing"] for ex in phrased} == {"compute", "calculate", "words", "equation"}


@pytest.mark.parametrize("name", FILES)
def test_every_line_is_valid_and_correct(datasets, name):
    examples = datasets[name]
    assert len(prompts(examples)) == len(examples)  # no duplicate problem within a file
    for ex in examples:
        assert ex["answer"] == str(apply_op(ex["a"], ex["operation"], ex["b"]))
        assert int(ex["answer"]) >= 0  # a >= b for subtraction, exact division
        # The prompt alone, without the "operation" key, must say which operation it is.
        assert operation_of({"prompt": ex["prompt"]}) == ex["operation"]


@pytest.mark.parametrize("train, held_out", [
    ("math_tasks_train.jsonl", "math_tasks_eval.jsonl"),
    ("tiny_train.jsonl", "tiny_eval.jsonl"),
])
def test_every_operation_is_present_in_train_and_eval(datasets, train, held_out):
    for name in (train, held_out):
        assert {ex["operation"] for ex in datasets[name]} == set(OPS)


def test_tiny_split_covers_the_pool_with_about_20_percent_held_out(datasets):
    n_train, n_eval = len(datasets["tiny_train.jsonl"]), len(datasets["tiny_eval.jsonl"])
    # 961 (+, 0-30) + 496 (-, a >= b) + 169 (*, 0-12) + 156 (/, exact) problems in the tiny pool.
    assert n_train + n_eval == 1782
    assert 0.18 < n_eval / (n_train + n_eval) < 0.22


def test_committed_files_match_the_generator(tmp_path):
    # data/ is generated, never edited by hand: regenerate with `python -m mathrl.data`.
    write_datasets(tmp_path, seed=0)
    for name in FILES:
        assert (DATA_DIR / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_same_seed_gives_identical_bytes(tmp_path):
    counts = write_datasets(tmp_path / "one", seed=3)
    write_datasets(tmp_path / "two", seed=3)
    assert set(counts) == set(FILES)
    for name in FILES:
        data = (tmp_path / "one" / name).read_bytes()
        assert data == (tmp_path / "two" / name).read_bytes()
        assert data.endswith(b"\n") and not data.endswith(b"\n\n")


def test_different_seed_gives_a_different_split(datasets):
    other = build_datasets(seed=1)
    assert triples(other["tiny_eval.jsonl"]) != triples(datasets["tiny_eval.jsonl"])
    assert triples(other["math_tasks_eval.jsonl"]) != triples(datasets["math_tasks_eval.jsonl"])


def test_generated_files_load_back_unchanged(tmp_path, datasets):
    write_datasets(tmp_path, seed=0)
    for name in FILES:
        assert load_jsonl(tmp_path / name) == datasets[name]


def test_write_datasets_into_a_file_is_a_user_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not_a_dir"):
        write_datasets(blocker)


# ---------------------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------------------

def test_loader_skips_blank_lines_keeps_extra_keys_and_normalises_answers(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(
        '{"prompt": "What is 2 + 3? Answer with an integer.", "answer": "5"}\n'
        "\n"
        "   \t \n"
        '{"prompt": "What is 4 * 6?", "answer": 24, "source": "hand", "a": 4}\n'
        '{"prompt": "What is 3 - 6?", "answer": " -3 "}\n'
        '{"prompt": "p", "answer": "+007"}\n'
        "\n"
    )
    assert load_jsonl(path) == [
        {"prompt": "What is 2 + 3? Answer with an integer.", "answer": "5"},
        {"prompt": "What is 4 * 6?", "answer": "24", "source": "hand", "a": 4},
        {"prompt": "What is 3 - 6?", "answer": "-3"},
        {"prompt": "p", "answer": "7"},
    ]


def test_loader_accepts_str_paths(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"prompt": "p", "answer": "1"}')  # no final newline is fine too
    assert load_jsonl(str(path)) == [{"prompt": "p", "answer": "1"}]


GOOD = '{"prompt": "What is 1 + 1?", "answer": "2"}\n'


@pytest.mark.parametrize("content, expected", [
    # Truncated object: JSON syntax error, reported with the line it is on (line 2, after a good line).
    (GOOD + '{"prompt": "p", "answer": \n', "line 2: invalid JSON ("),
    # Plain text instead of JSON.
    ("What is 1 + 1?\n", "line 1: invalid JSON ("),
    # Valid JSON but not an object.
    ('["What is 1 + 1?", "2"]\n', "line 1: expected a JSON object, got an array"),
    ('"What is 1 + 1?"\n', "line 1: expected a JSON object, got a string"),
    # Missing keys, named in quotes; line numbers count blank lines too.
    (GOOD + "\n" + '{"prompt": "p"}\n', 'line 3: missing key "answer"'),
    ('{"answer": "2"}\n', 'line 1: missing key "prompt"'),
    # Answer not an integer: word, decimal string, float, empty string, boolean, null.
    ('{"prompt": "p", "answer": "abc"}\n', 'line 1: "answer" must be an integer, got "abc"'),
    ('{"prompt": "p", "answer": "4.5"}\n', 'line 1: "answer" must be an integer, got "4.5"'),
    ('{"prompt": "p", "answer": 4.0}\n', 'line 1: "answer" must be an integer, got 4.0'),
    ('{"prompt": "p", "answer": ""}\n', 'line 1: "answer" must be an integer, got ""'),
    ('{"prompt": "p", "answer": true}\n', 'line 1: "answer" must be an integer, got true'),
    ('{"prompt": "p", "answer": null}\n', 'line 1: "answer" must be an integer, got null'),
    # Prompt empty, blank, or not a string.
    ('{"prompt": "", "answer": "2"}\n', 'line 1: "prompt" must be a non-empty string, got ""'),
    ('{"prompt": "  ", "answer": "2"}\n', 'line 1: "prompt" must be a non-empty string'),
    ('{"prompt": 7, "answer": "2"}\n', 'line 1: "prompt" must be a non-empty string, got 7'),
    # Nothing but blank lines, or nothing at all.
    ("\n  \n\n", ": no examples (empty file)"),
    ("", ": no examples (empty file)"),
])
def test_loader_errors_name_the_file_and_line(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert message.startswith(f"{path}")
    assert expected in message
    assert "\n" not in message  # one line, as printed by run_cli


def test_loader_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match="nope.jsonl: file not found"):
        load_jsonl(path)


# ---------------------------------------------------------------------------------------------------------
# operation_of
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, op", [
    ("What is 2 + 3? Answer with an integer.", "+"),   # standard phrasing, each symbol
    ("What is 12 - 7? Answer with an integer.", "-"),
    ("What is 4 * 6? Answer with an integer.", "*"),
    ("What is 144 / 12? Answer with an integer.", "/"),
    ("Compute 17 - 6.", "-"),                          # OOD phrasings
    ("Calculate 4 * 5.", "*"),
    ("What is 9 plus 3?", "+"),
    ("What is 9 minus 3?", "-"),
    ("What is 9 times 3?", "*"),
    ("What is 9 divided by 3?", "/"),
    ("What is 9 Divided  By 3?", "/"),                 # case and spacing do not matter
    ("9 × 3 = ?", "*"),                                # unicode symbols
    ("9 ÷ 3 = ?", "/"),
    ("What is 9 x 3?", "*"),                           # letter x as times
    ("What is 9x3?", "*"),                             # no spaces
    ("What is 5 - -3?", "-"),                          # negative second operand
    ("Explain the next step.", "?"),                   # no arithmetic at all
    ("What is x + y?", "?"),                           # no numbers: "x" alone is not times
    ("What is 9 modulo 3?", "?"),                      # unsupported operation
])
def test_operation_of_prompt(prompt, op):
    assert operation_of({"prompt": prompt, "answer": "0"}) == op


@pytest.mark.parametrize("value, op", [
    ("+", "+"), ("-", "-"), ("*", "*"), ("/", "/"),
    ("x", "*"), ("÷", "/"),  # aliases in a hand-written file
    ("%", "?"),              # unknown, even though the prompt below says "+"
])
def test_operation_key_wins_over_prompt(value, op):
    assert operation_of({"prompt": "What is 2 + 3?", "operation": value}) == op


def test_held_out_tiny_products_and_quotients_have_their_twin_in_train(datasets):
    # Held-out * and / must be answerable by symmetry: b * a (or a / q) is a training problem.
    train = {(ex["a"], ex["operation"], ex["b"]) for ex in datasets["tiny_train.jsonl"]}
    held = [ex for ex in datasets["tiny_eval.jsonl"] if ex["operation"] in ("*", "/")]
    assert held
    for ex in held:
        other = twin(ex["operation"], (ex["a"], ex["b"]))
        assert other is not None and (other[0], ex["operation"], other[1]) in train, ex["prompt"]


@pytest.mark.parametrize("op, pair, expected", [
    ("*", (3, 7), (7, 3)),    # a * b states the same fact as b * a
    ("*", (4, 4), None),      # a square has no distinct twin
    ("/", (56, 8), (56, 7)),  # 56 / 8 = 7 and 56 / 7 = 8
    ("/", (49, 7), None),     # quotient equals divisor: no distinct twin
    ("/", (0, 5), None),      # 0 / 5 = 0: 0 / 0 is not a problem
    ("+", (3, 7), (7, 3)),    # a + b states the same fact as b + a
    ("+", (5, 5), None),
    ("-", (9, 4), (9, 5)),    # 9 - 4 = 5 and 9 - 5 = 4
    ("-", (8, 4), None),      # 8 - 4 = 4: its own twin
    ("-", (6, 0), (6, 6)),    # 6 - 0 = 6 and 6 - 6 = 0
])
def test_twin(op, pair, expected):
    assert twin(op, pair) == expected


def test_has_trained_twin_reads_keys_or_the_prompt():
    """A generated line names its operands; a hand-written one is read from its prompt (any phrasing)."""
    train = [{"prompt": "What is 3 + 5? Answer with an integer.", "answer": "8"},
             {"prompt": "x", "answer": "5", "operation": "-", "a": 9, "b": 4}]
    examples = [{"prompt": "x", "answer": "8", "operation": "+", "a": 5, "b": 3},  # keys: 5 + 3 -> 3 + 5 trained
                {"prompt": "What is 9 minus 5?", "answer": "4"},                   # prompt: 9 - 5 -> 9 - 4 trained
                {"prompt": "Compute 5 + 4.", "answer": "9"},                       # 4 + 5 is not trained
                {"prompt": "How much is seven plus one?", "answer": "8"}]          # unreadable: no known twin
    assert has_trained_twin(examples, train) == [True, True, False, False]


def test_tiny_held_out_twins_in_train(datasets):
    """What the README says of the committed tiny split: 154 of the 192 held-out + and 75 of the 99 - problems have
    their twin in training, every held-out * and / has (by construction)."""
    flags = has_trained_twin(datasets["tiny_eval.jsonl"], datasets["tiny_train.jsonl"])
    counts = {}
    for example, trained in zip(datasets["tiny_eval.jsonl"], flags):
        counts.setdefault(example["operation"], [0, 0])[0] += trained
        counts[example["operation"]][1] += 1
    assert counts == {"+": [154, 192], "-": [75, 99], "*": [34, 34], "/": [31, 31]}
