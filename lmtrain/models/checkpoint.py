"""Checkpoints without pickle: safetensors for every tensor, JSON for everything else.

A checkpoint folder holds
  model.safetensors   weights (tied weights stored once)
  model.json          {"kind", "config"}: rebuild the model with lmtrain.models.registry.build_model
  state.safetensors   optimizer moments, RNG states, any other training tensors
  state.json          step, optimizer hyper-parameters, data position, history, ...
Loading reads only these formats, so an untrusted checkpoint cannot run code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import safetensors.torch as st
import torch
import torch.nn as nn

from lmtrain.models.registry import build_model, model_spec


def save_checkpoint(ckpt_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    state: dict | None = None, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint atomically: into `<dir>.tmp`, then renamed over `<dir>`."""
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    st.save_model(model, str(tmp / "model.safetensors"))
    (tmp / "model.json").write_text(json.dumps(model_spec(model), indent=2))
    all_tensors = {f"extra.{k}": v.detach().cpu().contiguous() for k, v in (tensors or {}).items()}
    meta = dict(state or {})
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        all_tensors.update(opt_tensors)
    st.save_file(all_tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=2))
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        ckpt_dir.rename(old)
    tmp.rename(ckpt_dir)
    if old.exists():
        shutil.rmtree(old)
    return ckpt_dir


def load_model(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from model.json and load its weights; returned in eval mode."""
    ckpt_dir = Path(ckpt_dir)
    spec_path = ckpt_dir / "model.json"
    if not spec_path.exists():
        raise FileNotFoundError(f"{ckpt_dir}: not a checkpoint (no model.json)")
    spec = json.loads(spec_path.read_text())
    model = build_model(spec["kind"], spec["config"])
    load_weights(model, ckpt_dir)
    return model.to(device).eval()


def load_weights(model: nn.Module, ckpt_dir: str | Path) -> None:
    """Load model.safetensors into an existing model (strict: every key must match)."""
    missing, unexpected = st.load_model(model, str(Path(ckpt_dir) / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt_dir}/model.safetensors: missing keys {missing}, unexpected keys {unexpected}")


def load_training_state(ckpt_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                        ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore weights and optimizer in place; return (state.json contents, extra tensors)."""
    ckpt_dir = Path(ckpt_dir)
    load_weights(model, ckpt_dir)
    meta = json.loads((ckpt_dir / "state.json").read_text())
    tensors = st.load_file(str(ckpt_dir / "state.safetensors"))
    if optimizer is not None:
        if "optimizer" not in meta:
            raise ValueError(f"{ckpt_dir}/state.json: no 'optimizer' entry to resume from")
        device = next(model.parameters()).device
        optimizer.load_state_dict(_unflatten_optimizer(meta["optimizer"], tensors, device))
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return meta, extra


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into named tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, pstate in sd["state"].items():
        scalars[str(pid)] = {}
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[str(pid)][name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(meta: dict, tensors: dict[str, torch.Tensor], device: torch.device) -> dict:
    state: dict[int, dict] = {int(pid): dict(vals) for pid, vals in meta["scalars"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            # AdamW keeps `step` on the CPU unless fused/capturable; moments live with the params
            state.setdefault(int(pid), {})[name] = value if name == "step" else value.to(device)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}
