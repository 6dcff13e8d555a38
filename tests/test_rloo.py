"""RLOO: the leave-one-out advantage on a hand-made batch, the sequence-level clipped loss on known
numbers, its config checks, a tiny run that saves a checkpoint every N steps and refuses training prompts
that are held out; and the over-optimisation curve over that run's checkpoints."""

import dataclasses
import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from lmtrain.align.curve import AlignCurveConfig, over_optimisation_curve
from lmtrain.align.reward_model import RewardModel, save_reward_model
from lmtrain.align.rl import saved_checkpoints
from lmtrain.align.rloo import (
    LOG_FIELDS,
    RLOOConfig,
    leave_one_out_advantages,
    sequence_policy_loss,
    train_rloo,
)
from lmtrain.align.splits import OverlapError
from lmtrain.config import ConfigError
from lmtrain.models.bundle import attach_tokenizer, load_gpt
from lmtrain.models.checkpoint import save_checkpoint
from lmtrain.models.gpt import GPT, GPTConfig
from lmtrain.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parent.parent


def test_leave_one_out_advantage_on_a_hand_made_batch():
    rewards = torch.tensor([[1.0, 2.0, 3.0],
                            [0.0, 0.0, 6.0]])
    # row 0: baselines (2+3)/2, (1+3)/2, (1+2)/2 = 2.5, 2, 1.5; row 1: 3, 3, 0
    expected = torch.tensor([[-1.5, 0.0, 1.5],
                             [-3.0, -3.0, 6.0]])
    torch.testing.assert_close(leave_one_out_advantages(rewards), expected)


def test_leave_one_out_advantage_sums_to_zero_per_prompt_and_ignores_a_shared_offset():
    r = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    adv = leave_one_out_advantages(r)
    torch.testing.assert_close(adv.sum(1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(leave_one_out_advantages(r + torch.arange(5.0)[:, None]), adv)
    assert math.isclose(float(adv[0, 0]), 4 / 3 * float(r[0, 0] - r[0].mean()), rel_tol=1e-5)  # k/(k-1)·(r - mean)


def test_leave_one_out_needs_two_replies():
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_advantages(torch.ones(3, 1))


def test_sequence_policy_loss_clips_whole_reply_ratios():
    old = torch.zeros(3)
    new = torch.tensor([0.5, 0.5, -0.5])  # ratios e^.5 (clipped to 1.2 for A > 0), e^.5 (A < 0: unclipped), e^-.5
    adv = torch.tensor([1.0, -1.0, 2.0])
    loss, stats = sequence_policy_loss(new, old, adv, clip_range=0.2)
    expected = (-1.2 + math.exp(0.5) - 2 * math.exp(-0.5)) / 3
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert stats["clip_fraction"] == 1.0


def test_rloo_defaults_equal_params_yaml():
    values = yaml.safe_load((ROOT / "params.yaml").read_text())["rloo"]
    defaults = {f.name: f.default for f in dataclasses.fields(RLOOConfig)}
    assert {k: defaults[k] for k in values} == values
    assert {"device", "dtype", "seed", "checkpoint_every"} <= set(values)


@pytest.mark.parametrize("setting, message", [({"samples_per_prompt": 1}, "at least 2 replies"),
                                              ({"top_p": 0.9}, "rloo.top_k=0, top_p=0.9"),
                                              ({"checkpoint_every": -1}, "checkpoint_every")])
def test_config_errors_name_the_rloo_setting(setting, message):
    with pytest.raises(ConfigError, match=message):
        RLOOConfig(**setting)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rloo")
    tok = train_bpe(["Continue the verse. Shall I compare thee to a summer's day?"] * 4, vocab_size=290)
    tok.save(root / "tok")
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=48, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    save_checkpoint(root / "sft", GPT(cfg))
    attach_tokenizer(root / "sft", root / "tok")
    save_reward_model(root / "rm", RewardModel(GPT(cfg)), root / "sft", {"note": "random head"})
    return {"root": root}


def instructions(folder: Path, train: list[str], held_out: list[str]) -> Path:
    rows = [{"id": f"{s}{i}", "split": s, "prompt": p, "response": "a reply",
             "messages": json.dumps([{"role": "user", "content": p}, {"role": "assistant", "content": "a reply"}])}
            for s, ps in (("train", train), ("eval", held_out)) for i, p in enumerate(ps)]
    folder.mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(folder / "part-0.parquet")
    return folder


@pytest.fixture(scope="module")
def run(tiny) -> dict:
    root = tiny["root"]
    ins = instructions(root / "ins", ["Say a.", "Say b.", "Say c."], [f"Tell {w}." for w in "zyxwvu"])
    cfg = RLOOConfig(steps=4, prompts_per_step=2, samples_per_prompt=3, max_new_tokens=6, minibatch_size=3,
                     checkpoint_every=2, learning_rate=1e-3, temperature=0.8, progress=False)
    return {"ins": ins, "out": root / "out", "metrics": train_rloo(cfg, root / "sft", root / "rm", ins, root / "out")}


def test_rloo_run_saves_a_checkpoint_every_n_steps_and_a_loadable_policy(tiny, run):
    root, m = tiny["root"], run["metrics"]
    assert m["steps"] == 4 and m["stopped"] is None and m["checkpoint_steps"] == [2, 4]
    assert [s for s, _ in saved_checkpoints(run["out"])] == [2, 4]
    log = json.loads((run["out"] / "log.json").read_text())
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all("seconds" not in r for r in log)
    assert (run["out"] / "log.csv").read_text().splitlines()[0] == ",".join(LOG_FIELDS)
    final, _ = load_gpt(run["out"] / "checkpoint")
    last, _ = load_gpt(saved_checkpoints(run["out"])[-1][1])
    start, _ = load_gpt(root / "sft")
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), last.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(final.state_dict().values(), start.state_dict().values()))


def test_curve_scores_every_checkpoint_on_dev_prompts_and_picks_by_the_held_out_signal(tiny, run):
    root = tiny["root"]
    cfg = AlignCurveConfig(prompts=0, samples_per_prompt=2, max_new_tokens=6, temperature=0.8)
    res = over_optimisation_curve(cfg, root / "sft", {"rloo": run["out"]}, root / "rm", root / "rm", run["ins"])
    assert res["split"] == "dev" and 0 < res["prompts"] < 6  # the dev side only, never the test side
    pts = res["points"]
    assert [p["step"] for p in pts] == [0, 2, 4]
    assert pts[0]["kl"] == 0 and pts[0]["judge_win_rate"] == 0.5 and all(p["kl"] != 0 for p in pts[1:])
    assert all(0 <= p["chrf"] <= 100 and p["mean_length"] > 0 for p in pts)
    best = max(pts, key=lambda p: (p["judge_score"], -p["step"]))
    assert res["chosen"]["rloo"]["step"] == best["step"] and res["chosen"]["rloo"]["final_step"] == 4
    # the proxy and the judge are the same model here, so they must pick the same step
    assert res["chosen"]["rloo"]["proxy_would_pick_step"] == best["step"]
    # a KL limit of 0 leaves only the SFT start to pick
    tight = over_optimisation_curve(AlignCurveConfig(prompts=2, max_new_tokens=6, temperature=0.8, kl_limit=0.0),
                                    root / "sft", {"rloo": run["out"]}, root / "rm", root / "rm", run["ins"])
    assert tight["chosen"]["rloo"]["step"] == 0 and tight["prompts"] == min(2, res["prompts"])


def test_curve_config_refuses_the_proxy_as_the_picking_signal():
    with pytest.raises(ConfigError, match="pick_by"):
        AlignCurveConfig(pick_by="proxy")


def test_rloo_refuses_a_held_out_prompt_before_any_work(tiny):
    root = tiny["root"]
    ins = instructions(root / "leak", ["Say a.", "Say  B."], ["say b."])  # same prompt once normalised
    with pytest.raises(OverlapError, match="rloo training prompts"):
        train_rloo(RLOOConfig(steps=1, progress=False), root / "sft", root / "rm", ins, root / "leak_out")
    assert not (root / "leak_out" / "checkpoint").exists()
