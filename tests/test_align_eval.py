"""align_eval end to end on tiny random models (a few seconds): a policy identical to SFT ties it on every
reply (win rate 0.5 with a zero-width interval, KL 0, the same chrF), another one does not; the split
decides the prompts; config mistakes fail before any model is loaded; batched generation equals
per-prompt generation."""

import json
import math

import polars as pl
import pytest
import torch

from lmtrain.align.evaluate import AlignEvalConfig, evaluate_alignment, length_rows, summary_rows
from lmtrain.align.metrics import reply_logprobs
from lmtrain.align.reward_model import RewardModel, save_reward_model
from lmtrain.align.splits import eval_prompts
from lmtrain.config import ConfigError, build_config
from lmtrain.inference.generate import generate_replies, generate_replies_batched
from lmtrain.models.bundle import attach_tokenizer, save_bundle
from lmtrain.models.checkpoint import save_checkpoint
from lmtrain.models.registry import build_model
from lmtrain.tokenizer import train_bpe

LINES = ["Now is the winter of our discontent", "Made glorious summer by this sun of York",
         "And all the clouds that lour'd upon our house", "In the deep bosom of the ocean buried"]
TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=64, dropout=0.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("align_eval")
    tok = train_bpe(LINES * 3, vocab_size=300)
    tok.save(root / "tok")
    torch.manual_seed(0)
    sft = build_model("gpt", TINY, vocab_size=tok.vocab_size)
    save_checkpoint(root / "sft", sft)
    attach_tokenizer(root / "sft", root / "tok")
    save_bundle(root / "same", sft, root / "sft")  # a policy that is the SFT model
    save_bundle(root / "other", build_model("gpt", TINY, vocab_size=tok.vocab_size), root / "sft")
    save_reward_model(root / "judge", RewardModel(build_model("gpt", TINY, vocab_size=tok.vocab_size)), root / "sft",
                      {})
    rows = []
    for i in range(12):
        prompt, reply = f"Continue: {LINES[i % 4]} ({i})", LINES[(i + 1) % 4]
        rows.append({"id": f"e{i:02d}", "split": "eval", "source": "shakespeare_instructions", "group": f"play{i}",
                     "prompt": prompt, "response": reply,
                     "messages": json.dumps([{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": reply}])})
    (root / "eval").mkdir()
    pl.DataFrame(rows).write_parquet(root / "eval" / "part-0.parquet")
    cfg = AlignEvalConfig(policies=["same", "other"], samples_per_prompt=2, max_new_tokens=8, bootstrap_resamples=200,
                          device="cpu", dtype="float32")
    m = evaluate_alignment(cfg, root / "sft", {"same": root / "same", "other": root / "other"}, root / "judge",
                           root / "eval", root / "out")
    return {"root": root, "m": m, "cfg": cfg}


def test_a_policy_identical_to_sft_ties_it(setup):
    m = setup["m"]
    same = m["same"]
    assert (same["win_rate"], same["win_rate_lo"], same["win_rate_hi"]) == (0.5, 0.5, 0.5)
    assert same["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)  # sampling-time vs teacher-forced log-probs
    assert same["chrf"] == m["sft"]["chrf"] and same["chrf_vs_sft"] == same["chrf_vs_sft_length_matched"] == 0.0
    assert same["cut_at_max_tokens"] == m["sft"]["cut_at_max_tokens"]
    assert same["length_flag"] is None and same["length_matched_pairs"] == same["pairs"] == 2 * m["prompts"]


def test_another_policy_gets_its_own_figures(setup):
    m, other = setup["m"], setup["m"]["other"]
    assert other["win_rate_lo"] <= other["win_rate"] <= other["win_rate_hi"]
    assert math.isfinite(other["kl_to_reference"]) and other["kl_to_reference"] != 0  # a sample estimate: any sign
    assert other["kl_to_reference_lo"] <= other["kl_to_reference"] <= other["kl_to_reference_hi"]
    assert 0 <= other["chrf_lo"] <= other["chrf"] <= other["chrf_hi"] <= 100
    assert 0 <= other["cut_at_max_tokens"] <= 1
    assert sum(b["pairs"] for b in other["win_rate_by_length"]) == other["pairs"]
    assert sum(other["length"]["histogram"]["counts"]) == other["pairs"]
    assert other["length_flag"] in (None, "longer", "shorter")
    assert json.loads((setup["root"] / "out" / "metrics.json").read_text())["other"] == other
    assert "**reference:**" in m["markdown"]


def test_the_split_picks_the_prompts(setup):
    m, root = setup["m"], setup["root"]
    test_ids = {r["id"] for r in eval_prompts(root / "eval", "test")}
    dev_ids = {r["id"] for r in eval_prompts(root / "eval", "dev")}
    assert m["split"] == "test" and m["prompts"] == len(test_ids) and not test_ids & dev_ids


def test_summary_has_one_row_per_model(setup):
    rows = summary_rows(setup["m"])
    assert [r["policy"] for r in rows] == ["sft", "same", "other"]
    assert rows[1]["judge win rate vs SFT [95% CI]"] == "0.50 [0.50, 0.50]"
    assert rows[1]["length-matched win rate (pairs)"].endswith(f"({2 * setup['m']['prompts']} of "
                                                               f"{2 * setup['m']['prompts']})")
    lengths = length_rows(setup["m"])
    assert [r["policy"] for r in lengths] == ["sft", "same", "other"]
    assert list(lengths[2])[:5] == ["policy", "replies <8", "replies 8-15", "replies 16-23", "replies >=24"]


def test_a_missing_checkpoint_fails_before_work(setup, tmp_path):
    root = setup["root"]
    with pytest.raises(ConfigError, match=r"no checkpoint for rloo: .*rloo"):
        evaluate_alignment(setup["cfg"], root / "sft", {"rloo": tmp_path / "rloo"}, root / "judge", root / "eval",
                           tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values, message", [
    ({"split": "train"}, r"split: 'train' is not one of \('dev', 'test'\)"),
    ({"top_k": 40}, "no top-k / top-p"),
    ({"temperature": 0.0}, "temperature > 0"),
    ({"policies": ["ppo", "ppo"]}, "distinct model names"),
    ({"length_bins": [16, 8]}, "increasing integers"),
])
def test_config_mistakes_fail_on_load(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(AlignEvalConfig, values, "align_eval")


def test_batched_generation_equals_per_prompt_generation():
    torch.manual_seed(1)
    model = build_model("gpt", dict(TINY, n_layer=2), vocab_size=40).eval()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], [11, 12]]  # different lengths in one batch
    batched, _ = generate_replies_batched(model, prompts, 3, 10, {0}, temperature=0.0, max_rows=7)
    assert batched == [generate_replies(model, p, 3, 10, {0}, temperature=0.0) for p in prompts]
    once, logprobs = generate_replies_batched(model, prompts, 2, 6, {0}, temperature=0.7, seed=5, max_rows=4)
    assert once == generate_replies_batched(model, prompts, 2, 6, {0}, temperature=0.7, seed=5, max_rows=4)[0]
    # the log-probs of the draws are the teacher-forced log-probs at the sampling temperature
    assert torch.allclose(logprobs, reply_logprobs(model, prompts, once, temperature=0.7), atol=1e-4)
