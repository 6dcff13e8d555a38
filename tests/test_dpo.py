"""DPO: the loss on known numbers, and reply log-probs that count only the reply."""

import math

import torch

from lmtrain.align.common import sequence_logprobs, token_logprobs
from lmtrain.align.dpo import dpo_loss
from lmtrain.models.gpt import GPT, GPTConfig


def test_dpo_loss_on_known_numbers():
    # policy moved +0.5 on chosen and -0.5 on rejected relative to the reference: logit 1
    loss, rc, rr = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]),
                            beta=0.1)
    assert math.isclose(float(loss), math.log1p(math.exp(-0.1)), rel_tol=1e-6)
    assert math.isclose(float(rc), 0.05, rel_tol=1e-5) and math.isclose(float(rr), -0.05, rel_tol=1e-5)


def test_dpo_loss_is_log2_at_the_reference_and_smoothing_mixes_both_directions():
    z = torch.zeros(4)
    loss, _, _ = dpo_loss(z - 3, z - 7, z - 3, z - 7, beta=0.5)
    assert math.isclose(float(loss), math.log(2), rel_tol=1e-6)
    loss, _, _ = dpo_loss(torch.tensor([0.0]), torch.tensor([-2.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                          beta=1.0, label_smoothing=0.25)
    expected = 0.75 * math.log1p(math.exp(-2)) + 0.25 * math.log1p(math.exp(2))
    assert math.isclose(float(loss), expected, rel_tol=1e-6)


def test_sequence_logprobs_sum_only_reply_tokens():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=30, n_layer=1, n_head=2, n_embd=16)).eval()
    a, b = [1, 2, 3, 4, 5], [6, 7, 8]  # prompts of 3 and 2 tokens
    with torch.no_grad():
        got = sequence_logprobs(model, [(a, 3), (b, 2)], pad=0)
        for row, (ids, n) in enumerate([(a, 3), (b, 2)]):
            x = torch.tensor([ids])
            lp = token_logprobs(model(x[:, :-1])[0], x[:, 1:])[0]
            assert math.isclose(float(got[row]), float(lp[n - 1:].sum()), rel_tol=1e-5)
