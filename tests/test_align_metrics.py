"""The alignment evaluation's numerics: chrF on hand-computed examples, the bootstrap over prompts
against the binomial interval, the two-sided length flag, length bins and KL under temperature."""

import math

import numpy as np
import pytest
import torch

from lmtrain.align.metrics import (
    bin_labels,
    bootstrap_ci,
    chrf,
    kl_to_reference,
    length_flag,
    length_matched,
    length_summary,
    per_prompt,
    reply_logprobs,
    win_rate_by_length,
    wins,
)
from lmtrain.models.registry import build_model


@pytest.mark.parametrize("hyp, ref, expected", [
    # orders 1-2 only (no 3-gram in "ab"): P = (2/2 + 1/1)/2 = 1, R = (2/3 + 1/2)/2 = 7/12; F2 = 5PR/(4P+R) = 7/11
    ("ab", "abc", 700 / 11),
    # swapped: P = (2/3 + 1/2)/2 = 7/12, R = 1 -> F2 = 35/40: recall weighs four times precision
    ("abc", "ab", 87.5),
    # clipped counts: unigrams match 2 of 4 (P 1/2), bigrams 1 of 3 (P 1/3), R = 1 -> F2 = 25/32
    ("aaaa", "aa", 78.125),
    ("To be or not", "To be or not", 100.0),
    ("a b  c\n", "abc", 100.0),  # whitespace is removed before counting
    ("xyz", "abc", 0.0),
    ("", "abc", 0.0),
])
def test_chrf_hand_computed(hyp, ref, expected):
    assert chrf(hyp, ref) == pytest.approx(expected, abs=1e-9)


def test_bootstrap_ci_matches_the_binomial_interval():
    """200 independent Bernoulli(0.7) prompts: the interval is p ± 1.96·sqrt(p(1-p)/n), to sampling noise."""
    rng = np.random.default_rng(7)
    x = (rng.random(200) < 0.7).astype(float)
    p = x.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / 200)
    ci = bootstrap_ci(x, resamples=4000, seed=1)
    assert ci["mean"] == pytest.approx(p) and ci["n"] == 200
    assert ci["lo"] == pytest.approx(p - half, abs=0.01) and ci["hi"] == pytest.approx(p + half, abs=0.01)
    assert bootstrap_ci(x, resamples=4000, seed=1) == ci  # seeded


def test_bootstrap_ci_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    hits = 0
    for i in range(200):
        ci = bootstrap_ci((rng.random(200) < 0.7).astype(float), resamples=1000, seed=i)
        hits += ci["lo"] <= 0.7 <= ci["hi"]
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_weighted_mean_is_a_ratio_over_pairs_resampled_by_prompt():
    # prompt 0: 2 matched pairs, both won; prompt 1: no matched pair (NaN); prompt 2: 1 pair, lost -> 2/3
    ci = bootstrap_ci([1.0, float("nan"), 0.0], weights=[2, 0, 1], resamples=500)
    assert ci["mean"] == pytest.approx(2 / 3) and 0.0 <= ci["lo"] <= ci["hi"] <= 1.0
    assert bootstrap_ci([0.5, 0.5], weights=[0, 0])["mean"] is None
    with pytest.raises(ValueError, match="one value per prompt"):
        bootstrap_ci([1.0, 0.0], weights=[1.0])


def test_constant_values_give_a_zero_width_interval():
    ci = bootstrap_ci([0.25] * 50, resamples=200)
    assert ci["lo"] == ci["hi"] == ci["mean"] == 0.25


@pytest.mark.parametrize("policy, base, flag", [
    (33.0, 27.0, "longer"),   # +22% > 20%
    (15.8, 27.7, "shorter"),  # -43%: issue 15's PPO, missed by the one-sided flag
    (30.0, 27.0, None),       # +11%
    (24.0, 27.0, None),       # -11%
    (0.0, 0.0, None),
])
def test_length_flag_fires_in_both_directions(policy, base, flag):
    assert length_flag(policy, base, margin=0.2) == flag


def test_wins_and_length_matched_pairs():
    p, b = np.array([2.0, 1.0, 3.0]), np.array([1.0, 1.0, 4.0])
    assert wins(p, b).tolist() == [1.0, 0.5, 0.0]
    lens_p, lens_b = np.array([10, 10, 30, 2]), np.array([11, 13, 27, 3])
    assert length_matched(lens_p, lens_b, 0.1).tolist() == [True, False, True, True]  # 1 token always matches


def test_win_rate_by_length_bins_and_summary():
    assert bin_labels([8, 16]) == ["<8", "8-15", ">=16"]
    with pytest.raises(ValueError, match="strictly increasing"):
        bin_labels([16, 8])
    win = np.array([1, 0, 1, 1, 0.5])
    lens = np.array([3, 7, 8, 15, 16])
    rows = win_rate_by_length(win, lens, [8, 16])
    assert rows == [{"bin": "<8", "pairs": 2, "win_rate": 0.5}, {"bin": "8-15", "pairs": 2, "win_rate": 1.0},
                    {"bin": ">=16", "pairs": 1, "win_rate": 0.5}]
    assert win_rate_by_length(win, lens, [100, 200])[1] == {"bin": "100-199", "pairs": 0, "win_rate": None}
    s = length_summary(np.arange(1, 11), [4, 8])
    assert s["mean"] == 5.5 and s["quantiles"]["p50"] == 5.5
    assert s["histogram"] == {"bins": ["<4", "4-7", ">=8"], "counts": [3, 4, 3]}


def test_per_prompt_reshapes_prompt_by_prompt():
    assert per_prompt(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match="do not split into 3 prompts"):
        per_prompt([1, 2, 3, 4], 3)


def test_reply_logprobs_and_kl_are_scored_at_the_sampling_temperature():
    torch.manual_seed(0)
    cfg = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.0)
    policy, ref = build_model("gpt", cfg, vocab_size=11).eval(), build_model("gpt", cfg, vocab_size=11).eval()
    prompts, replies = [[1, 2, 3], [4]], [[[5, 6], [7]], [[7, 8, 9], [10, 1]]]
    got = {id(m): reply_logprobs(m, prompts, replies, temperature=0.5, batch_size=3) for m in (policy, ref)}
    for m in (policy, ref):  # by hand: log softmax(logits / T) at each reply token, full forward in float64
        for i, p in enumerate(prompts):
            for k, r in enumerate(replies[i]):
                with torch.no_grad():
                    logp = torch.log_softmax(m(torch.tensor([p + r]))[0][0].double() / 0.5, -1)
                want = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(r))
                assert float(got[id(m)][i, k]) == pytest.approx(want, abs=1e-4)
    kl = kl_to_reference(policy, ref, prompts, replies, pad=0, temperature=0.5, batch_size=3)
    assert torch.allclose(kl, (got[id(policy)] - got[id(ref)]).reshape(-1))
    given = kl_to_reference(None, ref, prompts, replies, 0, 0.5, policy_logprobs=got[id(policy)])  # no policy pass
    assert torch.allclose(given, kl)
    assert kl_to_reference(policy, policy, prompts, replies, pad=0, temperature=0.5).abs().max() == 0
