"""Reward model: Bradley-Terry loss and accuracy on a hand-made batch, halves, calibration, save/load."""

import math

import torch

from lmtrain.align.pairs import mirror, training_pairs
from lmtrain.align.reward import calibration_table
from lmtrain.align.reward_model import RewardModel, bradley_terry_loss, pairwise_accuracy
from lmtrain.models.gpt import GPT, GPTConfig


def test_bradley_terry_loss_on_known_numbers():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(2))) / 3
    assert math.isclose(float(bradley_terry_loss(rc, rr)), expected, rel_tol=1e-6)
    # a margin asks for a larger gap: -log σ(2 - 1) for the first pair
    assert math.isclose(float(bradley_terry_loss(rc[:1], rr[:1], margin=1.0)), math.log1p(math.exp(-1)), rel_tol=1e-6)


def test_pairwise_accuracy_counts_strict_wins():
    assert pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0, 0.5]), torch.tensor([0.0, 3.0, 1.0, 0.5])) == 0.5


def test_calibration_table_bins_both_orders():
    rc, rr = torch.tensor([3.0, 0.1]), torch.tensor([0.0, 0.0])
    table = calibration_table(rc, rr, bins=2)
    assert [row["count"] for row in table] == [2, 2]
    assert table[0]["observed"] == 0.0 and table[1]["observed"] == 1.0  # each pair counted as won and as lost


def test_reward_model_reads_the_last_real_token_and_round_trips(tmp_path):
    torch.manual_seed(0)
    rm = RewardModel(GPT(GPTConfig(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16))).eval()
    x = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    with torch.no_grad():
        both = rm(x, torch.tensor([3, 5]))
        alone = rm(torch.tensor([[5, 6, 7]]), torch.tensor([3]))
    assert torch.allclose(both[0], alone[0], atol=1e-6)
    assert not torch.allclose(both[0], both[1])


def test_mirror_swaps_a_pair_under_the_prompt_its_rejected_reply_answers():
    pairs = [{"id": "a", "prompt": "pa", "chosen": "A", "rejected": "B"},
             {"id": "b", "prompt": "pb", "chosen": "B", "rejected": "C"},
             {"id": "c", "prompt": "pc", "chosen": "C", "rejected": "Z"}]  # Z answers no training prompt
    got = mirror(pairs)
    assert got == [{"id": "a/mirror", "prompt": "pb", "chosen": "B", "rejected": "A"},
                   {"id": "b/mirror", "prompt": "pc", "chosen": "C", "rejected": "B"}]
    # with the unmirrored pair dropped, every reply is chosen exactly as often as rejected
    fit = pairs[:2] + got
    for reply in "ABC":
        assert sum(p["chosen"] == reply for p in fit) == sum(p["rejected"] == reply for p in fit)


def test_training_pairs_drop_unmirrored_replies_but_keep_corrupted_rejects():
    pairs = [{"id": "a", "prompt": "pa", "chosen": "A", "rejected": "B"},
             {"id": "b", "prompt": "pb", "chosen": "B", "rejected": "A"},
             {"id": "c", "prompt": "pc", "chosen": "C", "rejected": "D"},    # D is the other half's reply
             {"id": "s", "prompt": "ps", "chosen": "S", "rejected": "s S"},  # a shuffled text: nobody's reply
             {"id": "h", "prompt": "ph", "chosen": "E", "rejected": "H"}]    # H is a held-out answer
    heldout = [{"id": "x", "prompt": "px", "chosen": "H", "rejected": "E"}]
    fit, info = training_pairs(pairs, heldout, mirror_pairs=True, drop_unmirrored=True,
                               replies={"A", "B", "C", "D", "S", "E", "H"})
    ids = sorted(p["id"] for p in fit)
    assert ids == ["a", "a/mirror", "b", "b/mirror", "s"]
    assert info == {"given_pairs": 4, "mirrored_pairs": 2, "heldout_overlap_dropped": 1}
    # without the whole set's replies, D looks like nobody's reply and the pair is kept
    fit, _ = training_pairs(pairs, heldout, mirror_pairs=True, drop_unmirrored=True)
    assert "c" in {p["id"] for p in fit}
