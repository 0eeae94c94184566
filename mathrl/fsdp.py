"""FSDP (config key `fsdp`): the policy's weights, gradients and optimizer state sharded over the processes.

    torchrun --standalone --nproc_per_node 2 train_sft.py --config configs/tiny.yaml --fsdp true

With `fsdp: true` and more than one process, train_sft.py and train_grpo.py shard the policy with PyTorch's FSDP2
(`torch.distributed.fsdp.fully_shard`: each decoder layer, then the whole model) before building the optimizer,
in place of accelerate's DDP wrapping (mathrl/modeling.py `prepare_policy`). Each process keeps 1/k of every weight;
a layer's full weights exist only while it runs (gathered before, freed after), and its gradients are averaged
and split back into shards (reduce-scatter), so the update equals DDP's, and one process's, to float rounding.
With one process the key does nothing (there is nothing to shard across).

Why the scripts shard the model themselves: accelerate 1.15 turns an FSDP accelerate config into plain DDP on a
machine without a GPU (it enables FSDP only for GPU-like devices), so the same code path would not run on the CPU
machines the tests run on. An FSDP accelerate config is refused with a pointer here (modeling.check_supported_launch).

What sharding changes elsewhere, each in one place:
- every process must run the same forward passes in the same order (each gathers the layers' shards from all the
  others): generation runs with `synced_gpus=True` (a process whose completions have all ended keeps stepping
  until every process's have) and evaluation runs as many generate calls on every process (generation.py); the
  shared-prefix fast paths, whose number of forwards depends on the batch, take their one-forward plain forms
  (fast_paths.cache_is_dropped);
- checkpoints: the full weights and the full optimizer state are gathered to process 0 (on CPU memory) and written
  as usual: model.safetensors through save_pretrained, the optimizer state (keyed by parameter name) in
  training_state.pt; resuming loads both back into the shards (`load_full_weights`, `load_full_optimizer_state`);
- gradient clipping computes the norm over every shard (`clip_gradients`).

Departures and limits: GRPO's KL reference model stays a full, unsharded replica on every process (it is only run
forward, without gradients or optimizer state); LoRA is not combined with FSDP (refused); fp16 is refused (it needs
a sharded gradient scaler); bf16 is FSDP's mixed precision policy (bf16 weights in the forward and backward,
fp32 gradient averaging, fp32 shards and optimizer), not autocast.
"""

from __future__ import annotations

import contextlib

import torch

from mathrl.errors import UserError


def wanted(config: dict, num_processes: int) -> bool:
    """Whether this launch shards the policy: `fsdp: true` and more than one process."""
    return bool(config["fsdp"]) and num_processes > 1


def check_fsdp(config: dict) -> None:
    """Refuse, before anything is written, what `fsdp: true` does not support."""
    if not config["fsdp"]:
        return
    if config["lora_r"] > 0:
        raise UserError("fsdp: true with lora_r > 0 is not supported: LoRA trains few weights, run it data parallel "
                        "(--fsdp false)")
    if config["mixed_precision"] == "fp16":
        raise UserError('fsdp: true with mixed_precision "fp16" is not supported (it would need a sharded gradient '
                        "scaler): use bf16 or no")


def is_sharded(model) -> bool:
    """Whether `model` was sharded by `shard` (FSDP2 turns each sharded module into an FSDPModule)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's decoder layers: the modules of the classes a Hugging Face model names in `_no_split_modules`
    (LlamaDecoderLayer for Llama), which are the natural unit to gather at once."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise UserError(f"fsdp: true: cannot find the decoder layers of {type(model).__name__} "
                        "(it names no _no_split_modules)")
    return layers


def shard(model, precision: str):
    """Shard `model` in place over every process (fully_shard on each decoder layer, then on the root, which holds
    the embeddings, the final norm and the output head) and return it. `precision` is the resolved
    mixed_precision: "bf16" runs the forward and backward in bf16 and averages gradients in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def reshard(model) -> None:
    """Free the gathered full weights that a forward pass without backward left in place. FSDP keeps the root
    module's weights gathered after its forward (the backward would need them at once), and while they are, the
    model's registered parameters are those full tensors, not the shards the optimizer holds; generation
    (no backward) calls this when done, and so does everything that reads the parameters by name."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextlib.contextmanager
def gradient_sync_off(model):
    """Accumulate this micro-batch's gradients locally, without averaging them over the processes (the last
    micro-batch of a window averages the sum): FSDP's form of DDP's `no_sync`."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def clip_gradients(parameters, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over sharded gradients: the norm of the full gradient (each process's
    shard norms combined over the processes), the same on every process; returns that norm before clipping."""
    from torch.distributed.tensor import DTensor

    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if isinstance(total, DTensor):  # a partial norm per process: combine them
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def _options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def _plain_optimizer(optimizer):
    """The torch optimizer inside accelerate's AcceleratedOptimizer wrapper (if any)."""
    return getattr(optimizer, "optimizer", optimizer)


def full_weights(model) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded model as save_pretrained writes it, gathered on process 0 in CPU memory ({}
    on the others). A collective: every process must call it.

    Tied weights (the output head that shares the embedding matrix) come back as separate copies, which
    save_pretrained, given a state dict, would write twice; the tied names (transformers' all_tied_weights_keys,
    target -> source) are dropped when they hold their source's values, as save_pretrained drops them itself."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(model)
    return without_tied_copies(model, get_model_state_dict(model, options=_options(cpu_offload=True)))


def without_tied_copies(model, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` without the tied names (transformers' all_tied_weights_keys, target -> source) that hold their
    source's values: save_pretrained, given a state dict of separate copies, would write them twice."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return {name: tensor for name, tensor in weights.items()
            if not (name in tied and tied[name] in weights and torch.equal(tensor, weights[tied[name]]))}


def full_optimizer_state(model, optimizer) -> dict:
    """The full optimizer state of a sharded model (tensors keyed by parameter name), gathered on process 0 in
    CPU memory ({} on the others). A collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    reshard(model)
    return get_optimizer_state_dict(model, _plain_optimizer(optimizer), options=_options(cpu_offload=True))


def load_full_weights(model, weights: dict[str, torch.Tensor]) -> None:
    """Put a full state dict (every process holds it) into the sharded model: each process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    reshard(model)
    set_model_state_dict(model, weights, options=_options())


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    """Put a full optimizer state saved by `full_optimizer_state` into the sharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    reshard(model)
    set_optimizer_state_dict(model, _plain_optimizer(optimizer), state, options=_options())
