"""The resumable training state beside ``checkpoints/last``: optimizer moments as safetensors,
the rest (epoch, best value, scheduler, RNG) as JSON. Nothing is pickled."""

from __future__ import annotations

from pathlib import Path

import torch

from dala.errors import DalaError, RunError
from dala.train.folder import OPTIMIZER_STATE_FILE, TRAINER_STATE_FILE


def save_training_state(folder: Path, optimizer, scheduler, state: dict) -> None:
    """Optimizer tensors as safetensors, the rest as JSON: nothing pickled."""
    from safetensors.torch import save_file

    from dala.io import atomic_path, atomic_write_json

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for k, v in pstate.items():
            key = f"state.{pid}.{k}"
            if torch.is_tensor(v):
                tensors[key] = v.detach().cpu().contiguous()
            else:
                scalars[key] = v
    tensors["rng.torch"] = torch.get_rng_state()
    with atomic_path(folder / OPTIMIZER_STATE_FILE) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(folder / TRAINER_STATE_FILE, {
        **state, "optimizer_param_groups": sd["param_groups"], "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    })


def load_training_state(folder: Path, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    from dala.io import read_json

    state = read_json(folder / TRAINER_STATE_FILE, expect=dict)
    if state is None or not (folder / OPTIMIZER_STATE_FILE).exists():
        raise RunError(f"{folder} holds no training state to resume from; start a new run instead.")
    try:
        return _load_training_state(folder, state, load_file(str(folder / OPTIMIZER_STATE_FILE)), optimizer, scheduler)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # valid JSON, wrong keys or types
        if isinstance(exc, DalaError):
            raise
        raise RunError(f"{folder / TRAINER_STATE_FILE} is damaged ({type(exc).__name__}: {exc}): this run cannot "
                       "be resumed; start a new run (or train it again without --resume).") from None


def _load_training_state(folder: Path, state: dict, tensors: dict, optimizer, scheduler) -> dict:
    opt_state: dict = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    for key, v in state.pop("optimizer_scalars", {}).items():
        _, pid, name = key.split(".", 2)
        opt_state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("optimizer_param_groups")})
    # safetensors stores contiguous tensors; a channels_last parameter needs its moments in its own
    # memory layout, or CUDA's fused AdamW refuses the step ("same dtype, device, and layout")
    for param, pstate in optimizer.state.items():
        for name, value in pstate.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                pstate[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return state
