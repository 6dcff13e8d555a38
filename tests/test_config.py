"""Training configs: defaults equal params.yaml's, every training section type-checked by one loader,
and the GPU profile resolves into configs every stage can build."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from lmtrain.align.dpo import DPOConfig
from lmtrain.align.evaluate import AlignEvalConfig
from lmtrain.align.ppo import PPOConfig
from lmtrain.align.reward import JudgeConfig, RewardConfig
from lmtrain.align.sft import SFTConfig
from lmtrain.config import ConfigError, OptimConfig, RunConfig, build_config, pretrain_configs
from lmtrain.pretrain.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {"sft": SFTConfig, "reward": RewardConfig, "judge": JudgeConfig, "ppo": PPOConfig, "dpo": DPOConfig,
            "align_eval": AlignEvalConfig}


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_profile(base: dict, profile: dict) -> dict:
    """params.yaml with a profile's leaves set, as `dvc exp run -S key=value` does (lists replaced whole)."""
    out = dict(base)
    for key, value in profile.items():
        out[key] = with_profile(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_alignment_defaults_equal_params_yaml(section):
    cls = SECTIONS[section]
    values = params()[section]
    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls)}  # list settings (align_eval.policies) have a factory
    assert {k: defaults[k] for k in values} == values
    assert {"device", "dtype", "seed"} <= set(values)  # every training section names its device and dtype


def test_every_method_config_extends_the_base():
    for cls in (*SECTIONS.values(), TrainConfig):
        assert issubclass(cls, RunConfig)
    for cls in (SFTConfig, RewardConfig, PPOConfig, DPOConfig, TrainConfig):
        assert issubclass(cls, OptimConfig)
        # the shared fields are declared once, in the base (a method may only change a default)
        own = set(cls.__dict__.get("__annotations__", {}))
        assert not own & {"device", "dtype", "progress"}, cls


def test_loader_type_checks_every_field():
    with pytest.raises(ConfigError, match=r"sft\.epochs: 'two' is not a int"):
        build_config(SFTConfig, {"epochs": "two"}, "sft")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['epoch'\]"):
        build_config(SFTConfig, {"epoch": 2}, "sft")
    with pytest.raises(ConfigError, match=r"ppo\.adaptive_kl: 1 is not a bool"):
        build_config(PPOConfig, {"adaptive_kl": 1}, "ppo")
    cfg = build_config(DPOConfig, {"learning_rate": 1, "beta": 0.2}, "dpo")
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1.0
    hints = typing.get_type_hints(TrainConfig)
    assert hints["learning_rate"] is float


def test_default_params_build_every_training_config():
    p = params()
    configs = pretrain_configs(p, TrainConfig, ("bigram", "mlp", "gpt"))
    assert set(configs) == {"bigram", "mlp", "gpt"} and configs["gpt"].vocab_multiple == 1  # CPU: unpadded
    for section, cls in SECTIONS.items():
        build_config(cls, p[section], section)


def test_gpu_profile_resolves_and_every_stage_config_builds():
    """The defect: pretrain.common.block_size 1024 reached the bigram and MLP (block 128) and failed."""
    from lmtrain.models.registry import build_model, config_fields

    p = with_profile(params(), yaml.safe_load((ROOT / "profiles/gpu.yaml").read_text()))
    configs = pretrain_configs(p, TrainConfig, ("bigram", "mlp", "gpt"))
    assert set(configs) == {"gpt"}  # the bigram (2.5 B entries at vocab 50,257) and the MLP are dropped
    gpt = configs["gpt"]
    assert (gpt.config, gpt.block_size, gpt.dtype, gpt.compile, gpt.vocab_multiple) == ("gpt2", 1024, "bfloat16",
                                                                                     True, 64)
    assert gpt.block_size <= config_fields("gpt", gpt.config).get("block_size", 1024)
    assert gpt.tokens_per_step % (gpt.batch_size * gpt.block_size) == 0
    model = build_model("gpt", {**config_fields("gpt", "gpt2"), "n_layer": 1}, vocab_size=p["tokenizer"]["vocab_size"],
                        vocab_multiple=gpt.vocab_multiple)
    assert model.transformer.wte.weight.shape[0] == 50304
    for section, cls in SECTIONS.items():
        cfg = build_config(cls, p[section], section)
        assert cfg.dtype == "bfloat16", section


def test_every_ablation_run_builds_its_pretrain_config():
    """The ablation grid pins a dict model config (a smaller model for CPU grids); the typed loader
    must accept it, as the model registry does."""
    from lmdata.ablation import AblationSpec, apply_overrides

    spec = AblationSpec.load(ROOT / "ablations.yaml")
    assert isinstance(spec.compute.config, dict)
    for variant in spec.variants:
        p = apply_overrides(params(), {**spec.fixed, **variant.overrides, **spec.compute.overrides()})
        configs = pretrain_configs(p, TrainConfig, ("bigram", "mlp", "gpt"))
        assert set(configs) == {spec.compute.model}, variant.name
        assert configs[spec.compute.model].config == spec.compute.config
