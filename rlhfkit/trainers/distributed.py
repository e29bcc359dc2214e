"""Data parallelism on torch.distributed: the few collectives the trainers need.

Launched by `torchrun --nproc_per_node N -m rlhfkit rl ...` (or `accelerate launch`), every rank
runs the same loop on its share of each global batch. The design rule: whatever the update
needs from the whole batch (loss normalizers, advantage statistics, reward moments, the
minibatch order) is computed from the *global* batch on every rank, each rank back-propagates
its own rows with those global normalizers, and the gradients are summed across ranks; so
the update equals the single-process update on the same global batch (tested).

Why summed by hand rather than `DistributedDataParallel`: a shuffled global minibatch gives the
ranks unequal (even empty) shares, and DDP's hooks need every rank to run the same backward
calls; one coalesced all-reduce of the accumulated gradients per optimizer step is what DDP
does, without that constraint. Parameters are broadcast from rank 0 at start, as DDP does.
With one process every function here is a no-op, so single-device runs pay nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rlhfkit.models.loading import is_sharded


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank in [0, size), and its device index on the node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0 writes logs, reports, checkpoints and the final model."""
        return self.rank == 0

    def share(self, total: int, what: str = "rows") -> tuple[int, int]:
        """[start, end) of this rank's contiguous share of `total` items; total must divide evenly."""
        if total % self.size:
            raise ValueError(f"{total} {what} cannot be split evenly over {self.size} ranks; "
                             f"use a multiple of {self.size}")
        per = total // self.size
        return self.rank * per, (self.rank + 1) * per


def world() -> World:
    """The current process group as a `World` (World() when torch.distributed is not initialized)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_distributed(device: str = "auto") -> tuple[World, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this rank's device.

    The backend follows the device: NCCL on CUDA, gloo on CPU. device "auto" (or "cuda") gives
    rank r the GPU LOCAL_RANK. A single process returns (World(), the device as given).
    """
    import torch.distributed as dist

    from rlhfkit.trainers.common import resolve_device

    size = int(os.environ.get("WORLD_SIZE", "1"))
    target = resolve_device(device)
    if size <= 1:
        return World(), target
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if target.type == "cuda":
        target = torch.device("cuda", local_rank if target.index is None else target.index)
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return world(), target


def finish() -> None:
    """Leave the process group (at the end of a CLI command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(w: World) -> None:
    if w.enabled:
        import torch.distributed as dist
        dist.barrier()


def broadcast_parameters(w: World, modules) -> None:
    """Rank 0's parameters and buffers to every rank (a freshly initialized head may differ)."""
    if not w.enabled:
        return
    import torch.distributed as dist

    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def all_reduce_grads(w: World, params, loss_scale: float = 1.0) -> None:
    """Sum the accumulated gradients of `params` over ranks, in one coalesced all-reduce.

    FSDP-sharded parameters are skipped (FSDP reduced them in backward); loss_scale: the factor
    the loss was multiplied by for them (see `loss_scale`), divided out of the others.

    A parameter without a gradient on some rank (its share of the minibatch was empty) gets
    zeros there; one without a gradient on every rank keeps None, as in a single process (so
    AdamW leaves it alone on every rank alike).
    """
    if not w.enabled:
        return
    import torch.distributed as dist

    from torch.distributed.tensor import DTensor

    params = [p for p in params if not isinstance(p, DTensor)]  # FSDP reduces its own shards
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist()) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not live:
        return
    flat = torch.cat([p.grad.reshape(-1).float() for p in live])
    dist.all_reduce(flat)
    if loss_scale != 1.0:
        flat /= loss_scale
    offset = 0
    for p in live:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def sum_dict(w: World, values: dict) -> dict:
    """{name: float} summed over ranks (the union of the names; a missing name counts 0)."""
    if not w.enabled:
        return values
    import torch.distributed as dist

    gathered = [None] * w.size
    dist.all_gather_object(gathered, {k: float(v) for k, v in values.items()})
    out: dict = {}
    for part in gathered:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


def any_rank(w: World, flag: bool) -> bool:
    """True on every rank when `flag` is true on any (e.g. a stop signal seen by one rank)."""
    if not w.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_rows(w: World, x: torch.Tensor | None, pad_value=0) -> torch.Tensor | None:
    """Concatenate every rank's rows in rank order: (n, ...) per rank -> (size * n, ...).

    Rows have the same count on every rank; a second dimension (the response length) may
    differ and is right-padded with `pad_value` to the longest. None stays None.
    """
    if not w.enabled or x is None:
        return x
    import torch.distributed as dist

    if x.dtype == torch.bool:  # gloo has no bool collectives
        return gather_rows(w, x.to(torch.uint8), int(pad_value)).bool()

    if x.dim() >= 2:
        width = torch.tensor([x.shape[1]], device=x.device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        pad = int(width.item()) - x.shape[1]
        if pad:
            x = torch.cat([x, x.new_full((x.shape[0], pad, *x.shape[2:]), pad_value)], dim=1)
    parts = [torch.empty_like(x) for _ in range(w.size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def balance_rows(rows: torch.Tensor, tokens: torch.Tensor, ranks: int) -> list[torch.Tensor]:
    """Split `rows` (M,) over `ranks` so each rank's total of `tokens` (M,) is about equal.

    Longest row first, each to the rank with the fewest tokens so far (lowest rank on ties); a
    pure function of its inputs, so every rank computes the same split. Returns each rank's rows,
    in their order in `rows`.
    """
    load = [0] * ranks
    owner = [0] * len(rows)
    for i in sorted(range(len(rows)), key=lambda i: (-int(tokens[i]), i)):
        r = min(range(ranks), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += int(tokens[i])
    return [rows[[i for i in range(len(rows)) if owner[i] == r]] for r in range(ranks)]


def gather_left_padded(w: World, x: torch.Tensor | None, pad_value=0) -> torch.Tensor | None:
    """`gather_rows` of left-padded rows (prompts): padded on the left to the longest."""
    if not w.enabled or x is None:
        return x
    return gather_rows(w, x.flip(1), pad_value).flip(1)


class NullLogger:
    """The metrics logger of ranks other than 0: accepts everything, writes nothing."""

    def log(self, *args, **kwargs):
        pass

    def event(self, *args, **kwargs):
        pass

    def close(self):
        pass


# --- FSDP2: parameters, gradients and optimizer state sharded over ranks -------------------------

def check_fsdp(cfg, w: World) -> None:
    """Refuse `fsdp` where it cannot work, before any model is loaded."""
    from rlhfkit.errors import ConfigError

    if cfg.fsdp and not w.enabled:
        raise ConfigError("fsdp shards over the processes of a torchrun launch; start it with "
                          "torchrun --nproc_per_node N (N >= 2), or drop --fsdp")
    if cfg.fsdp and getattr(cfg, "lora_r", 0):
        raise ConfigError("fsdp with LoRA is not supported (LoRA already keeps the trainable state small); "
                          "drop one of --fsdp / --lora-r")


def shard_model(model, param_dtype: str | None = None, cpu_offload: bool = False):
    """FSDP2 `fully_shard` on each transformer block, then on the modules the trainers call.

    A causal LM is called as a whole (generate, forward): it is the root. A `ScalarHeadModel`
    (critic, reward model) is called as backbone then head, so each is a root of its own.
    param_dtype ("bfloat16", "float16"): compute dtype (mixed precision; gradients are reduced in
    float32 and the sharded weights keep their dtype). cpu_offload: shards and optimizer state
    live in CPU memory (needs a GPU for compute).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    from rlhfkit.errors import ConfigError
    from rlhfkit.models.scalar_head import ScalarHeadModel

    kwargs = {}
    if param_dtype:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype), reduce_dtype=torch.float32)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    if isinstance(model, torch.nn.Linear):  # a lone head (the reward model's LM head): one unit
        fully_shard(model, **kwargs)
        return model
    scalar = isinstance(model, ScalarHeadModel)
    base = model.base if scalar else model
    if type(base).__name__.startswith("Peft") or hasattr(base, "peft_config"):
        raise ConfigError("fsdp with LoRA is not supported; LoRA already keeps the trainable state small")
    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError(f"{type(base).__name__}: no transformer blocks to shard (its _no_split_modules is empty)")
    for block in blocks:
        fully_shard(block, **kwargs)
    for root in ((model.backbone, model.head) if scalar else (model,)):
        fully_shard(root, **kwargs)
    return model


def full_state_dict(module) -> dict:
    """The unsharded weights on rank 0, in CPU memory ({} on other ranks); a collective.
    A module that is not sharded gives its own state_dict."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(module, state: dict) -> None:
    """Load unsharded weights (every rank passes them) into a sharded module."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state(module, optimizer) -> dict:
    """Optimizer state for a checkpoint: unsharded (rank 0) when `module` is sharded; a collective."""
    if not is_sharded(module):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                  cpu_offload=True))


def load_optimizer_state(module, optimizer, state: dict) -> None:
    if not is_sharded(module):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


def loss_scale(w: World, modules) -> float:
    """FSDP averages gradients over ranks; our losses are already divided by the global
    normalizer, so a sharded module's loss is multiplied by the world size to get the sum."""
    return float(w.size) if w.enabled and any(is_sharded(m) for m in modules) else 1.0


def max_over_ranks(w: World, value: int) -> int:
    if not w.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([float(value)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
