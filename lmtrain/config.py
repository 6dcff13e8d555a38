"""The base configs every training method extends, and one loader that type-checks every training
section of params.yaml before any work.

`RunConfig` holds what the runtime needs (seed, device, dtype, threads, progress); `OptimConfig`
adds the optimizer and schedule (learning rate, warm-up, cosine floor, weight decay, clipping).
Pretraining, SFT, reward, DPO and PPO configs extend `OptimConfig`, alignment evaluation extends
`RunConfig`; each method's fields map 1:1 to its params.yaml section, defaults equal to params.yaml's
(tests/test_config.py checks both).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A params section that does not fit its config: unknown key, wrong type. Raised before any work."""


@dataclass
class RunConfig:
    seed: int = 1337
    device: str = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | mps
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 elsewhere) | float32 | bfloat16 (autocast)
    threads: int = 1  # torch.set_num_threads; 0 = torch's default. 1 avoids OpenMP spin-waits on a shared box
    progress: bool = True  # a tqdm bar with rate and ETA in the terminal (rank 0)


@dataclass
class OptimConfig(RunConfig):
    learning_rate: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decay to learning_rate * min_lr_ratio
    warmup_steps: int = 0  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW decay, on 2-D weights only
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether `value` fits a field annotated `annotation` (ints fit floats; bools fit only bools)."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "str": str, "bool": bool}.get(annotation, Any)
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def build_config(cls: type[C], values: dict | None, where: str) -> C:
    """`cls(**values)`, after checking every key is a field and every value fits its type."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"params {where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    for key, value in values.items():
        if not _accepts(hints[key], value):
            raise ConfigError(f"params {where}.{key}: {value!r} is not a {getattr(hints[key], '__name__', hints[key])}")
    return cls(**{k: float(v) if hints[k] is float else v for k, v in values.items()})


def pretrain_configs(params: dict, config_cls: type[C], models: tuple[str, ...]) -> dict[str, C]:
    """One config per pretrained model: `pretrain.common` overridden by `pretrain.<model>`."""
    section = params.get("pretrain", {}) or {}
    out = {}
    for name in section.get("models", list(models)):
        merged = {**(section.get("common") or {}), **(section.get(name) or {})}
        out[name] = build_config(config_cls, {"model": name, **merged}, f"pretrain.{name}")
    return out
