"""The worked-answers data variant (data/tiny_reasoning_*.jsonl, mathrl/worked_solutions.py) and SFT on it
(`sft_target: solution`): hand-written traces, every stated step true, the reward reading the final "#### N",
verbosity that varies, and the config that fits the longest trace. CPU, no model."""

import json
import random
import re
import sys
from pathlib import Path

import pytest

import train_sft
from mathrl.answers import extract_answer, is_correct
from mathrl.config import resolve_config
from mathrl.data import apply_op, build_datasets, load_jsonl
from mathrl.errors import UserError
from mathrl.modeling import build_char_tokenizer
from mathrl.objectives import IGNORE_INDEX
from mathrl.prompts import completion_ids, encode_example, target_text
from mathrl.rewards import MathRewardModel
from mathrl.validation import check_train_examples
from mathrl.worked_solutions import WORDY_PROBABILITY, Style, draw_style, worked_solution

REPO_ROOT = Path(__file__).resolve().parent.parent
REASONING_CONFIG = str(REPO_ROOT / "configs" / "tiny_reasoning.yaml")
SPLITS = ("train", "eval", "ood")
TERSE, WORDY = Style(False, False, False), Style(True, True, True)


@pytest.fixture(scope="module")
def datasets() -> dict[str, list[dict]]:
    return build_datasets(seed=0)


@pytest.fixture(scope="module")
def char_tok():
    return build_char_tokenizer()


# ---------------------------------------------------------------------------------------------------------
# The traces
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, op, b, style, expected", [
    (27, "+", 15, TERSE, "7+5=12, 2+1+1=4. #### 42"),
    (27, "+", 15, WORDY, "We need 27 + 15. Ones: 7+5=12, write 2 carry 1. Tens: 2+1+1=4. Check: 42-15=27. "
                         "So 27 + 15 = 42. #### 42"),
    (21, "+", 5, TERSE, "1+5=6, 2+0=2. #### 26"),                      # no carry: no "+0" term
    (3, "+", 8, Style(False, True, False), "Ones: 3+8=11. #### 11"),    # one digit each: one column
    (23, "-", 5, TERSE, "13-5=8, 2-1-0=1. #### 18"),                   # borrow
    (23, "-", 5, Style(False, True, False), "Ones: 3<5, borrow 1: 13-5=8. Tens: 2-1-0=1. #### 18"),
    (29, "-", 14, Style(False, True, True), "Ones: 9-4=5, no borrow. Tens: 2-1=1. Check: 15+14=29. #### 15"),
    (7, "-", 7, TERSE, "7-7=0. #### 0"),
    (4, "*", 12, TERSE, "4*12=48. #### 48"),
    (4, "*", 12, Style(False, True, True), "Count by 12, 4 times: 12, 24, 36, 48. Check: 12*4=48. #### 48"),
    (0, "*", 9, Style(True, True, False), "We need 0 * 9. Anything times 0 is 0. So 0 * 9 = 0. #### 0"),
    (56, "/", 8, TERSE, "8*7=56. #### 7"),
    (24, "/", 8, Style(False, True, True), "Count by 8 up to 24: 8, 16, 24. That is 3 times. Check: 3*8=24. #### 3"),
    (0, "/", 5, Style(False, True, False), "0 divided by 5 is 0. #### 0"),
])
def test_worked_solution_by_hand(a, op, b, style, expected):
    assert worked_solution(a, op, b, apply_op(a, op, b), style) == expected


def test_worked_solution_refuses_what_it_cannot_work_out():
    with pytest.raises(ValueError, match="operation"):
        worked_solution(2, "^", 3, 8, TERSE)
    with pytest.raises(ValueError, match="0-99"):
        worked_solution(120, "+", 3, 123, TERSE)  # three-digit column addition is not written


# An equation stated in a trace: "7+5=12", "2+1+1=4", "13-5=8", "2-1-0=1", "12*4=48"; and "3<5".
_EQUATION = re.compile(r"(?<![\d.])(\d+(?:[-+*/]\d+)+)=(\d+)")
_LESS = re.compile(r"(\d+)<(\d+)")
_COUNT = re.compile(r"Count by (\d+)(?:, (\d+) times| up to (\d+)): ([\d, ]+)\.")


@pytest.mark.parametrize("split", SPLITS)
def test_every_step_of_every_trace_is_true_and_the_reward_reads_its_answer(datasets, split):
    """Checked on every line: each stated equation and comparison holds, each counting list is the multiples it
    says, the trace ends in "#### answer", and the repo's one rule of correctness (the reward's) accepts it."""
    reward = MathRewardModel()
    for ex in datasets[f"tiny_reasoning_{split}.jsonl"]:
        text = ex["solution"]
        assert text.endswith(f"#### {ex['answer']}") and text.count("####") == 1, text
        equations, counts = _EQUATION.findall(text), _COUNT.findall(text)
        assert equations or counts or " is 0." in text, text  # every trace states some working
        for left, right in equations:
            assert eval(left) == int(right), (left, right, text)  # digits and + - * / only (the regex)
        for small, big in _LESS.findall(text):
            assert int(small) < int(big), text
        for step, times, up_to, listed in counts:
            count = int(times) if times else int(up_to) // int(step)
            assert listed == ", ".join(str(int(step) * k) for k in range(1, count + 1)), text
            assert up_to == "" or f"That is {count} times." in text, text
        problem = f"{ex['a']} {ex['operation']} {ex['b']}"
        assert text.startswith(f"We need {problem}.") == (f"So {problem} = {ex['answer']}." in text), text
        assert extract_answer(text) == int(ex["answer"])
        assert is_correct(ex, text) and reward.compute_reward(ex, text) == 1.0
        assert is_correct(ex, " " + text)  # as the model writes it after the prompt (plain format)


def test_the_reward_reads_the_final_marker_not_the_last_number():
    """A trace whose last number is not its answer: only the "#### N" marker makes it right, and a wrong marker
    makes it wrong even when the working shows the right result."""
    example = {"prompt": "What is 12 + 9? Answer with an integer.", "answer": "21"}
    assert is_correct(example, "2+9=11, 1+0+1=2. #### 21")
    assert not is_correct(example, "2+9=11, 1+0+1=2. So 12 + 9 = 21. #### 12")
    assert is_correct(example, "We need 12 + 9. #### 21 Check: 21-9=12.")  # the number right after ####


def test_reasoning_files_are_the_tiny_files_with_a_solution(datasets):
    """Same problems, prompts and integer answers in the same order: eval and OOD results compare one to one with
    the plain tiny data's."""
    for split in SPLITS:
        plain, worked = datasets[f"tiny_{split}.jsonl"], datasets[f"tiny_reasoning_{split}.jsonl"]
        assert [{k: v for k, v in ex.items() if k != "solution"} for ex in worked] == plain
        assert all(list(ex)[-1] == "solution" for ex in worked)


def test_verbosity_varies_between_terse_and_wordy(datasets):
    """Each option is drawn with probability WORDY_PROBABILITY; terse traces are short, wordy ones long, and the
    same problem's trace length depends on the style drawn (up to ~9x)."""
    train = datasets["tiny_reasoning_train.jsonl"]
    restated = sum(t["solution"].startswith("We need") for t in train) / len(train)
    checked = sum("Check:" in t["solution"] for t in train) / len(train)
    # 1,426 draws each: the standard error of a fraction near 0.6 is 0.013.
    assert abs(restated - WORDY_PROBABILITY) < 0.05 and abs(checked - WORDY_PROBABILITY) < 0.05
    lengths = [len(t["solution"]) for t in train]
    assert min(lengths) <= 20 and max(lengths) >= 140
    for ex in train:
        terse = len(worked_solution(ex["a"], ex["operation"], ex["b"], int(ex["answer"]), TERSE))
        wordy = len(worked_solution(ex["a"], ex["operation"], ex["b"], int(ex["answer"]), WORDY))
        assert 13 <= terse <= 40 and 60 <= wordy <= 155 and wordy >= 3 * terse, ex


def test_styles_come_from_the_seeded_generator():
    first = [draw_style(random.Random("reasoning:0")) for _ in range(3)]
    again = [draw_style(random.Random("reasoning:0")) for _ in range(3)]
    assert first == again
    rng = random.Random(5)
    assert len({draw_style(rng) for _ in range(200)}) == 8  # every combination of the three options occurs


# ---------------------------------------------------------------------------------------------------------
# SFT on the worked solutions: sft_target
# ---------------------------------------------------------------------------------------------------------

WORKED = {"prompt": "What is 27 + 15? Answer with an integer.", "answer": "42", "solution": "7+5=12, 2+1+1=4. #### 42"}


def test_sft_target_picks_the_text_sft_trains_on(char_tok):
    config = resolve_config("sft", REASONING_CONFIG)
    assert config["sft_target"] == "solution"
    prompt, completion = encode_example(char_tok, WORKED, config)
    # Character tokenizer: " " + each character of the solution, then EOS.
    assert char_tok.decode(completion[:-1]) == " 7+5=12, 2+1+1=4. #### 42" and completion[-1] == char_tok.eos_token_id
    _, answer_only = encode_example(char_tok, WORKED, {**config, "sft_target": "answer"})
    assert char_tok.decode(answer_only[:-1]) == " 42"
    # The labels train every solution token and EOS, nothing of the prompt.
    batch = train_sft.collate([(prompt, completion)], char_tok.pad_token_id, "completion")
    labels = batch["labels"][0]  # [T]
    assert labels[:len(prompt)].eq(IGNORE_INDEX).all()
    assert labels[len(prompt):].tolist() == completion


def test_the_sft_loader_trains_on_the_solutions(char_tok, datasets):
    """train_sft's own loader, with configs/tiny_reasoning.yaml: every labelled token sequence is " " + a worked
    solution, then EOS."""
    config = {**resolve_config("sft", REASONING_CONFIG), "batch_size": 4}
    examples = datasets["tiny_reasoning_train.jsonl"][:4]
    (batch,) = list(train_sft.build_train_loader(examples, char_tok, config))
    trained = {char_tok.decode(row[row != IGNORE_INDEX][:-1].tolist()) for row in batch["labels"]}
    assert trained == {" " + ex["solution"] for ex in examples}
    assert all(row[row != IGNORE_INDEX][-1] == char_tok.eos_token_id for row in batch["labels"])


def test_sft_target_is_validated_when_the_config_is_read(tmp_path):
    with pytest.raises(UserError, match=r'--sft_target: key "sft_target" must be one of answer, solution, got '
                                        r"'steps'"):
        resolve_config("sft", REASONING_CONFIG, ["--sft_target", "steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft_target: worked\n")
    with pytest.raises(UserError, match=r'bad.yaml: key "sft_target" must be one of answer, solution'):
        resolve_config("grpo", str(bad))
    with pytest.raises(UserError, match='sft_target "worked": expected one of answer, solution'):
        target_text(WORKED, "worked")


def write_lines(path: Path, rows: list[dict]) -> str:
    path.write_text("\n" + "".join(json.dumps(row) + "\n" for row in rows))  # a blank first line: line numbers
    return str(path)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "What is 1 + 2?", "answer": "3"},
     r'train.jsonl line 3: sft_target solution: the example "What is 1 \+ 2\?" has no "solution" text'),
    ({"prompt": "What is 1 + 2?", "answer": "3", "solution": "1+2=3. #### 4"},
     r'train.jsonl line 3: the solution "1\+2=3. #### 4" ends in the answer 4; its "answer" is 3'),
    ({"prompt": "What is 1 + 2?", "answer": "3", "solution": "1+2=3. ####"},
     r'train.jsonl line 3: the solution "1\+2=3. ####" has no integer final answer; its "answer" is 3'),
    ({"prompt": "What is 1 + 2?", "answer": "3", "solution": "We need 1 + 2. " * 4 + "#### 3"},
     r'train.jsonl line 3: the solution "We need 1 \+ 2. We need 1 \+ 2. We need..." is 68 tokens with EOS; '
     r"max_completion_length is 30"),
])
def test_bad_solutions_are_one_line_errors_naming_the_line(char_tok, tmp_path, row, message):
    rows = [WORKED, row]
    path = write_lines(tmp_path / "train.jsonl", rows)
    config = {**resolve_config("sft", REASONING_CONFIG), "train_file": path, "max_completion_length": 30}
    with pytest.raises(UserError, match=message):
        check_train_examples(char_tok, load_jsonl(path), config)
    check_train_examples(char_tok, load_jsonl(path)[:1], config)  # the good line alone passes


@pytest.mark.parametrize("section", ["sft", "grpo", "evaluate", "compare"])
def test_reasoning_config_resolves_for_every_script(section):
    config = resolve_config(section, REASONING_CONFIG)
    assert config["sft_target"] == "solution" and config["model_name"] == "builtin:tiny-base"


def test_max_completion_length_fits_the_longest_trace_exactly(char_tok, datasets):
    """configs/tiny_reasoning.yaml's max_completion_length is the longest worked solution of the three files, in
    tokens with EOS as training encodes it: nothing is cut, in training or when generating for eval and OOD."""
    config = resolve_config("grpo", REASONING_CONFIG)
    longest = {split: max(len(completion_ids(char_tok, ex["solution"], "plain", sys.maxsize, ex["prompt"]))
                          for ex in datasets[f"tiny_reasoning_{split}.jsonl"]) for split in SPLITS}
    assert longest == {"train": 155, "eval": 148, "ood": 170}  # as configs/tiny_reasoning.yaml's comment says
    assert config["max_completion_length"] == max(longest.values())
    for split, key in (("train", "train_file"), ("eval", "eval_file"), ("ood", "ood_eval_file")):
        assert config[key] == f"data/tiny_reasoning_{split}.jsonl"
    check_train_examples(char_tok, load_jsonl(REPO_ROOT / config["train_file"]),
                         {**config, "train_file": str(REPO_ROOT / config["train_file"])})
