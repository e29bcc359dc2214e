"""Atomic checkpoints: a run interrupted at any moment can resume from the newest complete one.

Layout: OUTPUT/checkpoints/step-000010/{policy.safetensors, critic.safetensors, ...,
trainer_state.pt, COMPLETE}. A checkpoint is written into a temporary sibling folder and renamed
into place only when every file is on disk, so a crash leaves either the old or the new one.
Weights use safetensors; the trainer state (optimizer, scheduler, RNG, controllers, data position)
is loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

from rlhfkit.models.loading import is_sharded
from rlhfkit.trainers.common import TrainingError
from rlhfkit.trainers.distributed import World, load_full_state_dict, load_optimizer_state, optimizer_state

_MARKER = "COMPLETE"


def rng_state() -> dict:
    """Python and torch RNG states (CPU, and CUDA when present) as weights_only-loadable values."""
    state = {"python": _to_lists(random.getstate()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def save_checkpoint(root: str | os.PathLike, step: int, models: dict, state: dict, keep_last: int = 2) -> Path:
    """Write models' weights and the trainer `state` as checkpoint `step`, atomically.

    models: name -> nn.Module, or its (unsharded) state dict, saved as NAME.safetensors; state:
    tensors, numbers, lists, dicts.
    Keeps the newest `keep_last` complete checkpoints.
    """
    from safetensors.torch import save_file, save_model

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, model in models.items():
        if isinstance(model, dict):  # tied weights may share storage: one copy each
            save_file({k: v.detach().contiguous().clone() for k, v in model.items()}, str(tmp / f"{name}.safetensors"))
        else:
            save_model(model, str(tmp / f"{name}.safetensors"))
    torch.save(state, tmp / "trainer_state.pt")
    (tmp / _MARKER).write_text(str(step))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (half-written temporary folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / _MARKER).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, models: dict) -> dict:
    """Load weights into `models` (name -> module) and return the trainer state."""
    from safetensors.torch import load_file, load_model

    path = Path(path)
    for name, model in models.items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {file.name}; was it written by a run with other models?")
        if is_sharded(model):  # FSDP: every rank reads the whole file and keeps its shards
            load_full_state_dict(model, load_file(str(file)))
        else:
            load_model(model, str(file), device=str(next(model.parameters()).device))
    return torch.load(path / "trainer_state.pt", weights_only=True)


def rank_rng_states(w: World | None) -> dict:
    """{"rng_ranks": [every rank's RNG state]} for a checkpoint (a collective); {} in one process."""
    if w is None or not w.enabled:
        return {}
    import torch.distributed as dist

    states = [None] * w.size
    dist.all_gather_object(states, rng_state())
    return {"rng_ranks": states}


def set_rank_rng_state(state: dict, w: World | None, where) -> None:
    """Restore this rank's RNG from a checkpoint's trainer state; the world size must match."""
    size, rank = (w.size, w.rank) if w is not None else (1, 0)
    ranks = state.get("rng_ranks")
    written = len(ranks) if ranks is not None else 1
    if written != size:
        raise TrainingError(f"{where} was written by a run of {written} process(es) and this run has {size}; "
                            f"resume with the same number of processes (torchrun --nproc_per_node {written})")
    set_rng_state(ranks[rank] if ranks is not None else state["rng"])


def trainer_state(step: int, optimizers: dict, schedulers: dict, stateful: dict, trained: dict,
                  w: World | None = None) -> dict:
    """Everything besides weights that a resume needs (weights_only-loadable).

    optimizers: name -> optimizer of the model `trained[name]` (saved as `opt_NAME`, unsharded);
    schedulers: name -> LR scheduler (`sched_NAME`); stateful: name -> object with state_dict().
    In a data-parallel run (a collective: every rank calls it) also every rank's RNG state."""
    return {"step": step, "rng": rng_state(), **rank_rng_states(w),
            **{f"sched_{k}": s.state_dict() for k, s in schedulers.items()},
            **{f"opt_{k}": optimizer_state(trained[k], o) for k, o in optimizers.items()},
            **{k: v.state_dict() for k, v in stateful.items()}}


def restore_trainer_state(ckpt, trained: dict, optimizers: dict, schedulers: dict, stateful: dict,
                          skip=(), w: World | None = None) -> int:
    """Load checkpoint `ckpt` into models, optimizers, schedulers and stateful objects (those not in
    `skip`); returns its step. The inverse of `save_checkpoint(..., trainer_state(...))`."""
    state = load_checkpoint(ckpt, trained)
    set_rank_rng_state(state, w, ckpt)
    for name, opt in optimizers.items():
        load_optimizer_state(trained[name], opt, state[f"opt_{name}"])
    for name, sched in schedulers.items():
        sched.load_state_dict(state[f"sched_{name}"])
    for name, obj in stateful.items():
        if name not in skip and name in state:  # a checkpoint older than a component keeps its fresh state
            obj.load_state_dict(state[name])
    return int(state["step"])
