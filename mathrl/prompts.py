"""The one prompt formatter: SFT, GRPO, inference and evaluation all encode examples here.

The completion's ids are read off the joint tokenization of prompt text + answer text, after checking that its
first tokens are exactly the prompt ids: a tokenizer like Llama's marks the start of a text with "▁", so the
answer tokenized on its own ("56" -> "▁ 5 6") is not what the model produces after "<|assistant|>\\n"
("5 6"), and SFT would teach a token sequence the model never meets in context. A tokenizer whose merges cross
the prompt/answer boundary gets a clear error rather than a silently shifted loss mask. Generation is always fed
the very same prompt ids that training saw before the completion.

Chat prompts carry BOS whenever the tokenizer adds BOS to ordinary encodes: transformers renders chat templates
without special tokens, and TinyLlama-Chat's template has no `{{ bos_token }}`, though it was trained with one.
"""

from __future__ import annotations

from mathrl.errors import UserError

PROMPT_FORMATS = ("plain", "chat")
SFT_TARGETS = ("answer", "solution")


def shorten(text: str, limit: int = 60) -> str:
    """`text`, cut to `limit` characters ending in "..." when longer, for one-line error messages."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of an ordinary encode (Llama's do, GPT-2's do not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("1", add_special_tokens=True)["input_ids"][:1] == [bos]


def encode_text(tokenizer, text: str) -> list[int]:
    """Ids of `text` with BOS exactly once in front when the tokenizer adds BOS (and never EOS)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:  # a template may render "<s>" itself
        ids = [tokenizer.bos_token_id] + ids
    return ids


def prompt_text(tokenizer, prompt: str, prompt_format: str) -> str:
    """The text the model reads before it answers (chat markers included, special tokens as text)."""
    if prompt_format == "plain":
        return prompt
    if prompt_format == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise UserError("prompt_format chat needs a tokenizer with a chat template, and this model's has "
                            "none; use --prompt_format plain")
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
    raise UserError(f'prompt_format "{prompt_format}": expected one of {", ".join(PROMPT_FORMATS)}')


def prompt_ids(tokenizer, prompt: str, prompt_format: str, max_prompt_length: int) -> list[int]:
    """Token ids the model sees before it answers (BOS / chat markers included)."""
    ids = encode_text(tokenizer, prompt_text(tokenizer, prompt, prompt_format))
    if len(ids) > max_prompt_length:
        # Cutting either end loses the question or the generation marker next to the answer: refuse instead.
        raise UserError(f'prompt "{shorten(prompt)}" is {len(ids)} tokens, more than max_prompt_length '
                        f"{max_prompt_length}; raise --max_prompt_length")
    return ids


def completion_text(answer: str, prompt_format: str) -> str:
    """The text the model is trained to produce: the paper's `" " + answer` in plain format."""
    return " " + answer if prompt_format == "plain" else answer


def completion_ids(tokenizer, answer: str, prompt_format: str, max_completion_length: int,
                   prompt: str = "") -> list[int]:
    """Answer tokens as they follow the prompt in context, then EOS, so the model learns to stop.

    Equals the tokens after the prompt when the whole conversation is tokenized at once (for a chat template
    that closes the assistant turn with EOS, as Zephyr's does: the conversation up to that EOS).
    """
    context = prompt_text(tokenizer, prompt, prompt_format)
    before = encode_text(tokenizer, context)  # [P]
    joint = encode_text(tokenizer, context + completion_text(answer, prompt_format))  # [P + A]
    if joint[: len(before)] != before:
        raise UserError(
            f'prompt "{shorten(prompt)}" with answer "{shorten(answer, 20)}": the tokenizer merges tokens across '
            f"the prompt/answer boundary, so the answer's tokens cannot be separated from the prompt's"
        )
    ids = joint[len(before):]
    return ids[: max_completion_length - 1] + [tokenizer.eos_token_id]


def target_text(example: dict, sft_target: str) -> str:
    """What SFT trains the model to write for an example: its integer "answer" (the paper), or with sft_target
    "solution" its worked "solution" text (data/tiny_reasoning_*, ending in "#### N")."""
    if sft_target == "answer":
        return str(example["answer"])
    if sft_target != "solution":
        raise UserError(f'sft_target "{sft_target}": expected one of {", ".join(SFT_TARGETS)}')
    solution = example.get("solution")
    if not isinstance(solution, str) or not solution.strip():
        raise UserError(f'sft_target solution: the example "{shorten(example["prompt"])}" has no "solution" text')
    return solution


def encode_example(tokenizer, example: dict, config: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids ending in EOS) for one {"prompt", "answer"} example; the completion is the
    answer or the worked solution (`target_text`, config key sft_target)."""
    fmt = config["prompt_format"]
    return (
        prompt_ids(tokenizer, example["prompt"], fmt, config["max_prompt_length"]),
        completion_ids(tokenizer, target_text(example, config["sft_target"]), fmt, config["max_completion_length"],
                       example["prompt"]),
    )
