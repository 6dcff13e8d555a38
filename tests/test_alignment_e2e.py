"""End to end on a tiny random GPT and a few hand-made conversations: sft -> reward (+ judge) -> ppo
-> dpo -> judged evaluation -> chat. ~15 s alone, more on a loaded box: marked slow."""

import json
import math

import polars as pl
import pytest
import safetensors.torch as st
import torch

from lmtrain.align.dpo import DPOConfig, train_dpo
from lmtrain.align.evaluate import AlignEvalConfig, evaluate_alignment
from lmtrain.align.ppo import LOG_FIELDS, PPOConfig, train_ppo
from lmtrain.align.reward import JudgeConfig, RewardConfig, train_judge, train_reward
from lmtrain.align.reward_model import load_reward_model, score_ids
from lmtrain.align.sft import SFTConfig, train_sft
from lmtrain.align.splits import eval_prompts
from lmtrain.inference.chat import chat_loop
from lmtrain.models.bundle import attach_tokenizer, load_gpt
from lmtrain.models.checkpoint import save_checkpoint
from lmtrain.models.registry import build_model
from lmtrain.tokenizer import train_bpe

pytestmark = pytest.mark.slow

TOPICS = {
    "loops": "A for loop repeats a block for each item of a sequence.",
    "functions": "A function is defined with def and returns a value.",
    "classes": "A class bundles data and methods into one object type.",
    "imports": "The import statement loads a module by its name.",
    "lists": "A list is a mutable sequence written in square brackets.",
    "strings": "A string is an immutable sequence of unicode characters.",
    "dicts": "A dict maps hashable keys to values in curly braces.",
    "tuples": "A tuple is an immutable sequence written with commas.",
    "sets": "A set holds unique hashable items without order.",
    "files": "The open function returns a file object for reading.",
    "errors": "An exception is raised when an error occurs at run time.",
    "numbers": "Integers and floats are the basic numeric types.",
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("align")
    names = sorted(TOPICS)
    tok = train_bpe([f"Explain {k}. {v}" for k, v in TOPICS.items()] * 3, vocab_size=300)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = build_model("gpt", dict(n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.0),
                        vocab_size=tok.vocab_size)
    save_checkpoint(root / "init", model)
    attach_tokenizer(root / "init", root / "tok")
    ins, cmp = [], []
    for i, k in enumerate(names):
        split = "eval" if i >= 9 else "train"
        prompt, other = f"Explain {k}.", names[(i + 5) % len(names)]
        ins.append({"id": f"i{i:02d}", "split": split, "prompt": prompt, "response": TOPICS[k],
                    "messages": json.dumps([{"role": "user", "content": prompt},
                                            {"role": "assistant", "content": TOPICS[k]}])})
        cmp.append({"id": f"c{i:02d}", "split": split, "prompt": prompt, "chosen": TOPICS[k],
                    "rejected": TOPICS[other]})
    for name, rows in (("ins", ins), ("cmp", cmp)):
        (root / name).mkdir()
        pl.DataFrame(rows).write_parquet(root / name / "part-0.parquet")

    out = {"root": root}
    out["sft"] = train_sft(SFTConfig(epochs=4, batch_size=3, learning_rate=3e-3, samples=2, sample_max_new_tokens=8,
                                     eval_split="all"),
                           root / "init", root / "ins", root / "ins", root / "sft")
    sft = root / "sft" / "checkpoint"
    rcfg = RewardConfig(epochs=3, batch_size=3, learning_rate=1e-3, eval_split="all")
    out["rm"] = train_reward(rcfg, sft, root / "cmp", root / "cmp", root / "rm", root / "ins")
    jcfg = JudgeConfig(epochs=3, batch_size=3, learning_rate=1e-3, eval_split="all")  # from the pretrained model
    out["judge"] = train_judge(jcfg, root / "init", root / "cmp", root / "cmp", root / "judge", rcfg.subset, root / "ins")
    pcfg = PPOConfig(steps=3, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, minibatch_size=2,
                     learning_rate=1e-3)
    out["ppo"] = train_ppo(pcfg, sft, root / "rm" / "checkpoint", root / "ins", root / "ppo")
    out["dpo"] = train_dpo(DPOConfig(epochs=6, batch_size=4, learning_rate=3e-3, eval_split="all"), sft, root / "cmp",
                           root / "cmp", root / "dpo", rcfg.subset, root / "ins")
    out["eval"] = evaluate_alignment(AlignEvalConfig(samples_per_prompt=2, max_new_tokens=8, split="dev"), sft,
                                     {"ppo": root / "ppo" / "checkpoint", "dpo": root / "dpo" / "checkpoint"},
                                     root / "judge" / "checkpoint", root / "ins", root / "eval")
    out["pcfg"] = pcfg
    return out


def test_sft_learns_and_writes_samples(chain):
    m = chain["sft"]
    assert m["eval_loss"] < m["eval_loss_before"]
    assert m["steps"] == 4 * 3 and len(m["samples"]) == 2
    assert (chain["root"] / "sft" / "samples.md").read_text().count("## Explain") == 2


def test_reward_and_judge_train_on_disjoint_halves_and_reload(chain):
    rm, judge = chain["rm"], chain["judge"]
    assert (rm["subset"], judge["subset"]) == ("half_a", "half_b") and rm["seed"] != judge["seed"]
    assert judge["init"].endswith("init") and rm["init"].endswith("checkpoint")  # not the reward model's twin
    assert judge["other_half_pairs_checked"] > 0 and rm["eval_prompts_checked"] == 3
    # i -> i+5 mod 12: three training pairs reject a held-out answer and are dropped
    assert rm["heldout_overlap_dropped"] + judge["heldout_overlap_dropped"] == 3
    assert rm["given_pairs"] + judge["given_pairs"] == 6
    assert 0.0 <= rm["accuracy"] <= 1.0 and rm["pairs"] == 3 and len(rm["calibration"]) == 5
    model, tok = load_reward_model(chain["root"] / "rm" / "checkpoint")
    again, _ = load_reward_model(chain["root"] / "rm" / "checkpoint")
    rows = [tok.encode("Explain sets. A set."), tok.encode("x")]
    assert torch.equal(score_ids(model, rows, tok.eot_id), score_ids(again, rows, tok.eot_id))


def test_ppo_logs_every_step_and_saves_policy_with_value_head(chain):
    root = chain["root"] / "ppo"
    assert chain["ppo"]["steps"] == 3 and chain["ppo"]["stopped"] is None
    log = json.loads((root / "log.json").read_text())
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(set(LOG_FIELDS) <= set(r) for r in log)
    assert (root / "log.csv").read_text().splitlines()[0] == ",".join(LOG_FIELDS)
    assert set(st.load_file(str(root / "checkpoint" / "value_head.safetensors"))) == {"weight", "bias"}
    sft_model, _ = load_gpt(chain["root"] / "sft" / "checkpoint")
    ppo_model, _ = load_gpt(root / "checkpoint")
    assert not torch.equal(sft_model.lm_head.weight, ppo_model.lm_head.weight)


def test_ppo_stops_above_kl_max_and_keeps_the_last_good_policy(chain, capsys):
    root = chain["root"]
    cfg = PPOConfig(**{**chain["pcfg"].__dict__, "kl_max": -1.0})  # any KL is too much: stop at the first check
    m = train_ppo(cfg, root / "sft" / "checkpoint", root / "rm" / "checkpoint", root / "ins", root / "ppo_stop")
    assert m["steps"] == 0 and "exceeds ppo.kl_max" in m["stopped"]
    assert "PPO stopped early" in capsys.readouterr().out
    sft_model, _ = load_gpt(root / "sft" / "checkpoint")
    kept, _ = load_gpt(root / "ppo_stop" / "checkpoint")
    assert all(torch.equal(a, b) for a, b in zip(sft_model.state_dict().values(), kept.state_dict().values()))


def test_dpo_moves_the_policy(chain):
    m = chain["dpo"]
    per_epoch = math.ceil(m["train_pairs"] / 4)
    assert m["steps"] == 6 * per_epoch
    history = json.loads((chain["root"] / "dpo" / "history.json").read_text())
    assert history[0]["loss"] == pytest.approx(0.6931, abs=1e-4)  # log 2: the policy starts as the reference
    last_epoch = history[-per_epoch:]
    assert sum(r["loss"] for r in last_epoch) / len(last_epoch) < 0.6931
    assert "eval_reward_accuracy" in m


def test_alignment_eval_reports_win_rate_kl_and_length(chain):
    m = chain["eval"]
    for name in ("ppo", "dpo"):
        assert 0.0 <= m[name]["win_rate"] <= 1.0
        assert m[name]["win_rate_lo"] <= m[name]["win_rate"] <= m[name]["win_rate_hi"]
        assert m[name]["mean_length"] > 0 and m[name]["length_flag"] in (None, "longer", "shorter")
        assert m[name]["kl_to_reference"] == pytest.approx(m[name]["kl_to_reference"])  # finite
    assert m["split"] == "dev" and m["prompts"] == len(eval_prompts(chain["root"] / "ins", "dev"))
    assert "**ppo:**" in m["markdown"]
    assert json.loads((chain["root"] / "eval" / "metrics.json").read_text())["ppo"] == m["ppo"]


def test_chat_loop_keeps_history_and_exits(chain):
    lines = iter(["Explain sets.", "/reset", "Explain files.", "/exit", "never read"])
    printed: list[str] = []
    history = chat_loop(chain["root"] / "sft" / "checkpoint", input_fn=lambda _: next(lines),
                        output_fn=lambda *a, **k: printed.append("".join(map(str, a))), max_new_tokens=8)
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "Explain files."
    assert "(history cleared)" in printed


def test_outputs_are_deterministic(chain, tmp_path):
    root = chain["root"]
    again = train_sft(SFTConfig(epochs=4, batch_size=3, learning_rate=3e-3, samples=2, sample_max_new_tokens=8,
                                eval_split="all"),
                      root / "init", root / "ins", root / "ins", tmp_path / "sft")
    assert (tmp_path / "sft" / "checkpoint" / "model.safetensors").read_bytes() == \
        (root / "sft" / "checkpoint" / "model.safetensors").read_bytes()
    assert again["samples"] == chain["sft"]["samples"]




def test_dpo_micro_batches_accumulate_to_the_whole_batch(chain, tmp_path):
    """Micro-batches (chunked forward + gradient accumulation) give the whole batch's losses."""
    root, sft = chain["root"], chain["root"] / "sft" / "checkpoint"
    runs = {}
    for micro in (0, 1):
        cfg = DPOConfig(epochs=1, batch_size=4, learning_rate=3e-3, micro_batch_size=micro, eval_batch_size=3)
        train_dpo(cfg, sft, root / "cmp", root / "cmp", tmp_path / f"m{micro}", subset="all")  # both halves: > 1 step
        runs[micro] = json.loads((tmp_path / f"m{micro}" / "history.json").read_text())
    assert len(runs[0]) == len(runs[1]) > 1
    for whole, micro in zip(runs[0], runs[1]):
        assert micro["loss"] == pytest.approx(whole["loss"], abs=1e-5)
        assert micro["reward_margin"] == pytest.approx(whole["reward_margin"], abs=1e-5)
