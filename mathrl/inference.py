"""The one implementation behind inference.py (GRPO checkpoints) and inference_sft.py (SFT checkpoints).

Prompts come from the command line, else from stdin when it is piped, else from an interactive prompt.
Answers are greedy by default; pass --temperature / --top_p with --sample to sample instead.
"""

from __future__ import annotations

import argparse
import sys

from mathrl.answers import extract_answer
from mathrl.config import for_checkpoint, parse_args
from mathrl.errors import UserError
from mathrl.generation import complete
from mathrl.modeling import load_model_and_tokenizer, make_accelerator


def read_prompts(args) -> list[str] | None:
    """Prompts from the command line or piped stdin; None means interactive."""
    if args.prompts:
        return args.prompts
    if not sys.stdin.isatty():
        return [line.strip() for line in sys.stdin if line.strip()]
    return None


def answer_prompts(model, tokenizer, prompts: list[str], config: dict, args) -> None:
    outputs = complete(model, tokenizer, prompts, config, batch_size=config["eval_batch_size"],
                       do_sample=args.sample, temperature=args.temperature, top_p=args.top_p)
    for prompt, (sample,) in zip(prompts, outputs):
        print(f"{prompt}\n  -> {sample['text'].strip()!r}  (extracted answer: {extract_answer(sample['text'])})")


def run_inference(default_ckpt: str, description: str) -> None:
    # ---- config ---------------------------------------------------------------------------------------
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("prompts", nargs="*", help='e.g. "What is 7 * 8? Answer with an integer."')
    parser.add_argument("--ckpt", default=default_ckpt, metavar="DIR", help=f"default: {default_ckpt}")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.9)
    args, config = parse_args("evaluate", parser)
    if args.sample and (args.temperature <= 0 or not 0 < args.top_p <= 1):
        raise UserError(f"--sample needs --temperature > 0 and --top_p in (0, 1], got {args.temperature:g} and "
                        f"{args.top_p:g}")
    config = for_checkpoint(config, args.ckpt)

    # ---- model ----------------------------------------------------------------------------------------
    model, tokenizer = load_model_and_tokenizer(args.ckpt, config)
    model = model.to(make_accelerator(config).device)

    # ---- answer ---------------------------------------------------------------------------------------
    prompts = read_prompts(args)
    if prompts is not None:
        answer_prompts(model, tokenizer, prompts, config, args)
        return
    print(f"model: {args.ckpt}. Type a problem (empty line or Ctrl-D to quit).")
    for line in iter(lambda: input("> "), ""):
        answer_prompts(model, tokenizer, [line], config, args)
