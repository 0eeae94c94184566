"""Input checks made before anything is created or trained: checkpoint directories, training data the tokenizer
cannot represent, and output files that must not overwrite anything. Each problem is one UserError line naming
the file, key or value and what is expected.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

from mathrl.answers import extract_answer
from mathrl.checkpoint import TMP_CHECKPOINT
from mathrl.data import load_jsonl, training_subset
from mathrl.errors import UserError
from mathrl.prompts import completion_ids, prompt_ids, shorten, target_text

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


# ---- checkpoints ------------------------------------------------------------------------------------------

def check_checkpoint_dir(path: str | Path) -> None:
    """A local directory that from_pretrained can load: config.json, intact weights and tokenizer files."""
    path = Path(path)
    if TMP_CHECKPOINT.fullmatch(path.name):
        raise UserError(f"{path}: a half-written checkpoint (its save was interrupted); use a complete step_N/ or "
                        "final/ beside it")
    if not path.is_dir():
        raise UserError(f"{path}: expected a checkpoint directory, got a file")
    names = {p.name for p in path.iterdir()}
    if "config.json" not in names:
        if "final" in names or "metrics.jsonl" in names or any(n.startswith("step_") for n in names):
            raise UserError(f"{path}: a training run's directory, not a checkpoint; pass {path / 'final'} "
                            "(or one of its step_N/)")
        what = "an empty directory" if not names else "no config.json"
        raise UserError(f"{path}: not a Hugging Face checkpoint ({what})")
    if not names & set(WEIGHT_FILES):
        raise UserError(f"{path}: no model weights (expected {' or '.join(WEIGHT_FILES[:2])})")
    if not names & set(TOKENIZER_FILES):
        raise UserError(f"{path}: no tokenizer files (expected {' or '.join(TOKENIZER_FILES)})")
    for name in sorted(names):
        if name.endswith(".safetensors"):
            check_safetensors(path / name)


def check_safetensors(path: Path) -> None:
    """The file is as long as its header says (a truncated copy or an interrupted write is caught here)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size:
                raise ValueError
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a valid safetensors file (corrupt header)") from None
    if 8 + header_len + end != size:
        raise UserError(f"{path}: truncated or corrupt ({size} bytes, its header describes {8 + header_len + end})")


# ---- training data --------------------------------------------------------------------------------------------

def load_train_examples(tokenizer, config: dict) -> list[dict]:
    """The examples a trainer trains on: train_file, checked whole (`check_train_examples`, so an error names the
    file's line), then cut to its train_fraction (mathrl.data.training_subset, seeded by the run's seed)."""
    examples = load_jsonl(config["train_file"])
    check_train_examples(tokenizer, examples, config)
    return training_subset(examples, config["train_fraction"], config["seed"])


def check_train_examples(tokenizer, examples: list[dict], config: dict) -> None:
    """Refuse SFT targets (the answer, or the worked solution with sft_target solution) that do not fit
    max_completion_length (with EOS), and worked solutions whose final answer is not the example's answer; warn
    about characters the tokenizer maps to its unknown token, which the model can neither read nor write."""
    unk, where = tokenizer.unk_token_id, config["train_file"]
    fmt, unknown, kind = config["prompt_format"], [], config["sft_target"]
    for n, example in enumerate(examples):
        try:
            text = target_text(example, kind)
        except UserError as err:
            raise UserError(f"{where} line {example_lines(where)[n]}: {err}") from None
        final = extract_answer(text) if kind == "solution" else None
        if kind == "solution" and str(final) != example["answer"]:
            ends = "has no integer final answer" if final is None else f"ends in the answer {final}"
            raise UserError(f'{where} line {example_lines(where)[n]}: the solution "{shorten(text, 40)}" {ends}; '
                            f'its "answer" is {example["answer"]}')
        # target + EOS, uncut, tokenized as it follows its prompt (as training encodes it)
        answer = completion_ids(tokenizer, text, fmt, sys.maxsize, example["prompt"])
        if len(answer) > config["max_completion_length"]:
            raise UserError(f'{where} line {example_lines(where)[n]}: the {kind} "{shorten(text, 40)}" is '
                            f'{len(answer)} tokens with EOS; max_completion_length is '
                            f'{config["max_completion_length"]}, so it would be cut and trained as a wrong label. '
                            "Raise max_completion_length")
        prompt = prompt_ids(tokenizer, example["prompt"], fmt, config["max_prompt_length"])
        if unk is not None and unk in prompt + answer:
            unknown.append(example)
    if unknown:
        print(f"warning: {where}: {len(unknown)} examples hold characters the tokenizer maps to "
              f"{tokenizer.unk_token}, first: {json.dumps(unknown[0]['prompt'])}", file=sys.stderr)


def example_lines(path: str | Path) -> list[int]:
    """The line number of each example of a JSONL file (mathrl.data.load_jsonl skips blank lines)."""
    text = Path(path).read_text(encoding="utf-8")
    return [n for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


# ---- output files ----------------------------------------------------------------------------------------------

def check_output_file(output: Path, inputs: list[str | Path], overwrite: bool) -> None:
    """An output file that is not a directory, not one of the inputs, and not an earlier result (unless
    `overwrite`)."""
    if output.is_dir():
        raise UserError(f"--output {output}: is a directory, expected a file name such as {output / 'results.json'}")
    if output.exists() and any(Path(p).exists() and os.path.samefile(output, p) for p in inputs):
        raise UserError(f"--output {output}: is an input file; refusing to replace it")
    if output.exists() and not overwrite:
        raise UserError(f"--output {output}: already exists; pass --overwrite to replace it, or another --output")


def write_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a crash never leaves half a file under `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
