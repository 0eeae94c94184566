"""The one prompt formatter: SFT, GRPO, inference and evaluation all encode examples here.

Prompt and completion are tokenized separately and concatenated, so the boundary between them is exact for
any tokenizer: a Llama tokenizer adds BOS and merges a leading space into the next token, which would shift
the boundary if `prompt + " " + answer` were tokenized as one string. Generation is always fed the very same
prompt ids that training saw before the completion.
"""

from __future__ import annotations

from mathrl.errors import UserError

PROMPT_FORMATS = ("plain", "chat")


def prompt_ids(tokenizer, prompt: str, prompt_format: str, max_prompt_length: int) -> list[int]:
    """Token ids the model sees before it answers (BOS / chat markers included)."""
    if prompt_format == "plain":
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    elif prompt_format == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise UserError("prompt_format chat needs a tokenizer with a chat template, and this model's has "
                            "none; use --prompt_format plain")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    else:
        raise UserError(f'prompt_format "{prompt_format}": expected one of {", ".join(PROMPT_FORMATS)}')
    # Keep the end: the generation prompt (e.g. "<|assistant|>") must stay next to the answer.
    return list(ids[-max_prompt_length:])


def completion_text(answer: str, prompt_format: str) -> str:
    """The text the model is trained to produce: the paper's `" " + answer` in plain format."""
    return " " + answer if prompt_format == "plain" else answer


def completion_ids(tokenizer, answer: str, prompt_format: str, max_completion_length: int) -> list[int]:
    """Answer tokens followed by EOS, so the model learns to stop."""
    ids = tokenizer(completion_text(answer, prompt_format), add_special_tokens=False)["input_ids"]
    return list(ids)[: max_completion_length - 1] + [tokenizer.eos_token_id]


def encode_example(tokenizer, example: dict, config: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids ending in EOS) for one {"prompt", "answer"} example."""
    fmt = config["prompt_format"]
    return (
        prompt_ids(tokenizer, example["prompt"], fmt, config["max_prompt_length"]),
        completion_ids(tokenizer, str(example["answer"]), fmt, config["max_completion_length"]),
    )
