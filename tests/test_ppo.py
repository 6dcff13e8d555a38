"""PPO pieces: GAE against a direct sum, clipped losses on known numbers, the KL controller, replies
that stop at the end-of-turn token, and log-probs / KL scored at the rollout temperature."""

import math

import pytest
import torch

from lmtrain.align.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PolicyWithValue,
    PPOConfig,
    compute_gae,
    policy_loss,
    reply_stats,
    rollout,
    value_loss,
    whiten,
)
from lmtrain.align.reward_model import RewardModel
from lmtrain.config import ConfigError
from lmtrain.inference.generate import generate_replies
from lmtrain.models.gpt import GPT, GPTConfig
from lmtrain.tokenizer import train_bpe
from lmtrain.tokenizer.chat import END_OF_TURN, stop_ids


def direct_gae(r: list[float], v: list[float], gamma: float, lam: float) -> list[float]:
    """A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} - V_t, V after the last step = 0."""
    n = len(r)
    delta = [r[t] + gamma * (v[t + 1] if t + 1 < n else 0.0) - v[t] for t in range(n)]
    return [sum((gamma * lam) ** k * delta[t + k] for k in range(n - t)) for t in range(n)]


def test_gae_matches_direct_computation_on_ragged_rows():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    lengths = [5, 3, 1]
    mask = (torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]).float()
    gamma, lam = 0.9, 0.8
    adv, ret = compute_gae(rewards * mask, values * mask, mask, gamma, lam)
    for b, n in enumerate(lengths):
        expected = direct_gae(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
        torch.testing.assert_close(adv[b, :n], torch.tensor(expected), rtol=1e-5, atol=1e-6)
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()
        torch.testing.assert_close(ret[b, :n], adv[b, :n] + values[b, :n])


def test_gae_with_gamma_and_lambda_one_is_return_minus_value():
    r = torch.tensor([[0.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 1.5]])
    adv, ret = compute_gae(r, v, torch.ones(1, 3), 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[1.5, 1.0, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[2.0, 2.0, 2.0]]))


def test_policy_loss_clips_on_known_numbers():
    old = torch.zeros(1, 4)
    logp = torch.tensor([[0.5, 0.5, -0.5, 0.0]])  # ratios e^.5 = 1.6487, 1.6487, e^-.5 = 0.6065, 1
    adv = torch.tensor([[1.0, -1.0, 1.0, 2.0]])
    loss, stats = policy_loss(logp, old, adv, torch.ones(1, 4), clip_range=0.2)
    r_hi, r_lo = math.exp(0.5), math.exp(-0.5)
    # per token max(-A r, -A clip(r)): -1.2 (clipped), +r_hi (unclipped, pessimistic), -r_lo, -2
    expected = (-1.2 + r_hi - r_lo - 2.0) / 4
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert stats["clip_fraction"] == 0.75
    assert math.isclose(stats["ratio_mean"], (2 * r_hi + r_lo + 1) / 4, rel_tol=1e-6)
    assert math.isclose(stats["approx_kl"], 0.5 * (0.25 * 3) / 4, rel_tol=1e-6)


def test_policy_loss_ignores_masked_tokens():
    loss, _ = policy_loss(torch.tensor([[0.1, 9.0]]), torch.zeros(1, 2), torch.tensor([[1.0, 5.0]]),
                          torch.tensor([[1.0, 0.0]]), 0.2)
    assert math.isclose(float(loss), -math.exp(0.1), rel_tol=1e-6)


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1]])
    ret = torch.tensor([[1.0, 1.0]])
    # token 1: unclipped error 0, clipped (0.2) error 0.64 -> 0.64; token 2: both 0.81
    loss = value_loss(new, old, ret, torch.ones(1, 2), clip=0.2)
    assert math.isclose(float(loss), 0.5 * (0.64 + 0.81) / 2, rel_tol=1e-6)


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert math.isclose(ctl.update(12.0, 100), 0.1 * 1.02)  # error clipped at +0.2
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert math.isclose(ctl.update(6.0, 100), 0.1)
    assert math.isclose(ctl.update(5.4, 100), 0.1 * (1 - 0.1 * 0.1))  # error -0.1
    assert FixedKLController(0.3).update(100.0, 10) == 0.3


def test_whiten_gives_zero_mean_unit_variance_on_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, m)
    assert abs(float((w * m).sum())) < 1e-5 and math.isclose(float((w[0, :3] ** 2).mean()), 1.0, rel_tol=1e-4)


@pytest.fixture(scope="module")
def tok():
    return train_bpe(["Explain loops. A loop repeats a block."] * 4, vocab_size=280)


def test_generation_stops_at_the_end_of_turn_token(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)).eval()
    end = tok.special_tokens[END_OF_TURN]
    with torch.no_grad():  # make <|end|> the most likely token everywhere: ln_f outputs its (scaled) embedding
        model.transformer.wte.weight[end] *= 10
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[end])
    replies = generate_replies(model, [1, 2, 3], n=2, max_new_tokens=10, stop=stop_ids(tok), temperature=0.0)
    assert replies == [[end], [end]]


def test_sampled_replies_are_cut_right_after_their_first_stop_token(tok):
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)).eval()
    free = generate_replies(model, [1, 2, 3], 3, 12, set(), generator=torch.Generator().manual_seed(5))
    assert all(len(r) == 12 for r in free)
    stop = free[0][4]  # pretend the 5th sampled token of row 0 were the end of turn
    cut = generate_replies(model, [1, 2, 3], 3, 12, {stop}, generator=torch.Generator().manual_seed(5))
    for full, r in zip(free, cut):
        k = full.index(stop) + 1 if stop in full else len(full)
        assert r == full[:k]
    assert cut[0][-1] == stop and len(cut[0]) <= 5


def hand_logprob(logits_row: list[float], target: int, temperature: float) -> float:
    """log softmax(logits / T)[target], written out in float64."""
    z = [v / temperature for v in logits_row]
    top = max(z)
    return z[target] - top - math.log(sum(math.exp(v - top) for v in z))


def test_rollout_scores_log_probs_and_kl_at_the_rollout_temperature(tok):
    torch.manual_seed(2)
    cfg_model = GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)
    policy, ref = PolicyWithValue(GPT(cfg_model)).eval(), GPT(cfg_model).eval()
    rm = RewardModel(GPT(cfg_model)).eval()
    cfg = PPOConfig(samples_per_prompt=2, max_new_tokens=5, temperature=0.5, whiten_advantages=False)
    prompts = [[5, 6, 7], [8, 9]]
    batch = rollout(policy, ref, rm, tok, prompts, cfg, kl_coef=0.1, generator=torch.Generator().manual_seed(3))
    for b, reply in enumerate(batch["replies"]):
        ids = prompts[b // 2] + reply
        with torch.no_grad():
            pol_logits = policy(torch.tensor([ids]))[0][0].double().tolist()
            ref_logits = ref(torch.tensor([ids]))[0][0].double().tolist()
        n = len(prompts[b // 2])
        want = [hand_logprob(pol_logits[n - 1 + j], reply[j], 0.5) for j in range(len(reply))]
        want_ref = [hand_logprob(ref_logits[n - 1 + j], reply[j], 0.5) for j in range(len(reply))]
        at_one = [hand_logprob(pol_logits[n - 1 + j], reply[j], 1.0) for j in range(len(reply))]
        got = batch["logp"][b, :len(reply)]
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-4, atol=1e-4)
        assert max(abs(a - w) for a, w in zip(at_one, want)) > 1e-2  # temperature 1 would score differently
        assert math.isclose(float(batch["kl"][b]), sum(want) - sum(want_ref), rel_tol=1e-4, abs_tol=1e-4)


def test_update_log_probs_equal_rollout_log_probs_at_temperature(tok):
    """Before any gradient step the update's new log-probs equal the rollout's old ones: ratio 1."""
    torch.manual_seed(4)
    cfg_model = GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)
    policy, ref = PolicyWithValue(GPT(cfg_model)).eval(), GPT(cfg_model).eval()
    cfg = PPOConfig(samples_per_prompt=3, max_new_tokens=6, temperature=1.7)
    batch = rollout(policy, ref, RewardModel(GPT(cfg_model)).eval(), tok, [[5, 6, 7]], cfg, 0.1,
                    torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, values = policy(batch["x"])
        logp, _, _ = reply_stats(logits, values, batch["x"], batch["starts"], batch["width"], cfg.temperature)
    torch.testing.assert_close(logp * batch["mask"], batch["logp"] * batch["mask"])


@pytest.mark.parametrize("setting", [{"top_k": 20}, {"top_p": 0.9}, {"temperature": 0.0}])
def test_truncated_or_greedy_rollout_sampling_is_a_config_error(setting):
    with pytest.raises(ConfigError, match="ppo") as e:
        PPOConfig(**setting)
    assert "sampl" in str(e.value)
