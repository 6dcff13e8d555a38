"""Evaluation: whole-split loss and bpb, windows covering each token once, multiple choice, HellaSwag JSONL."""

import json
import math

import numpy as np
import pytest
import torch

from lmtrain.data.shards import TokenShards, write_shard
from lmtrain.data.windows import eval_windows
from lmtrain.models.registry import build_model
from lmtrain.pretrain.evaluate import (
    evaluate_loss,
    hellaswag_accuracy,
    multiple_choice_accuracy,
    multiple_choice_items,
    read_hellaswag,
)


def make_split(folder, sizes=(300, 77), vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    for i, n in enumerate(sizes):
        write_shard(folder / f"s{i}", rng.integers(0, vocab, n), vocab, n_bytes=2 * n, documents=1, eot_id=0)
    return TokenShards(folder)


@pytest.mark.parametrize("stride", [None, 5, 16])
def test_eval_windows_score_every_token_exactly_once(tmp_path, stride):
    shards = make_split(tmp_path)
    scored = [y[start:] for x, y, start in eval_windows(shards, 16, stride)]
    assert all(len(x) <= 16 for x, _, _ in eval_windows(shards, 16, stride))
    assert np.array_equal(np.concatenate(scored), np.concatenate([s.tokens for s in shards.shards]))


def test_uniform_model_bpb_is_log2_vocab_over_bytes_per_token(tmp_path):
    shards = make_split(tmp_path)
    model = build_model("bigram", {"block_size": 16}, vocab_size=20)  # zero init = uniform
    ev = evaluate_loss(model, shards, batch_size=4)
    assert ev["eval_tokens"] == 377
    assert ev["eval_loss"] == pytest.approx(math.log(20), rel=1e-5)
    assert ev["eval_bpb"] == pytest.approx(math.log2(20) / 2, rel=1e-5)  # 2 bytes per token


def test_multiple_choice_items_are_deterministic_and_contain_the_truth(tmp_path):
    shards = make_split(tmp_path, sizes=(2000,))
    a = multiple_choice_items(shards, n_items=10, context_len=8, continuation_len=4, seed=3)
    b = multiple_choice_items(shards, n_items=10, context_len=8, continuation_len=4, seed=3)
    assert a == b
    stream = shards.shards[0].tokens
    for item in a:
        assert len(item["choices"]) == 4
        truth = item["choices"][item["label"]]
        hits = [i for i in range(len(stream) - 12) if list(stream[i:i + 8]) == item["context"]]
        assert any(list(stream[i + 8:i + 12]) == truth for i in hits)


def test_model_that_knows_the_sequence_gets_full_accuracy(tmp_path):
    # a deterministic cycle 1,2,...,19,0,1,...: a bigram that knows it predicts every continuation
    # (the shard starts after the end-of-text id 0, which the cycle also follows with 1)
    write_shard(tmp_path / "s0", np.arange(1, 2001) % 20, 20, n_bytes=2000, documents=1, eot_id=0)
    shards = TokenShards(tmp_path)
    model = build_model("bigram", {"block_size": 16}, vocab_size=20)
    with torch.no_grad():
        model.token_logits.weight.fill_(-10.0)
        for t in range(20):
            model.token_logits.weight[t, (t + 1) % 20] = 10.0
    items = multiple_choice_items(shards, n_items=30, context_len=8, continuation_len=4)
    assert multiple_choice_accuracy(model, items) == 1.0
    uniform = build_model("bigram", {"block_size": 16}, vocab_size=20)
    ev = evaluate_loss(model, shards)
    assert ev["eval_loss"] < 0.01 < evaluate_loss(uniform, shards)["eval_loss"]


class CharTokenizer:
    def encode(self, s):
        return [ord(c) % 20 for c in s]


def test_hellaswag_jsonl_is_read_and_scored(tmp_path):
    path = tmp_path / "hs.jsonl"
    rows = [{"ctx": "abc", "endings": ["def", "xyz", "aaa", "bbb"], "label": i % 4} for i in range(8)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    model = build_model("gpt", {"block_size": 16, "n_layer": 1, "n_head": 1, "n_embd": 8}, vocab_size=20)
    result = hellaswag_accuracy(model, CharTokenizer(), path)
    assert result["n"] == 8
    assert 0.0 <= result["acc"] <= 1.0 and 0.0 <= result["acc_norm"] <= 1.0
    # the same ending wins every item, so exactly the items whose label points at it are right
    assert result["acc"] == 0.25


def test_hellaswag_reader_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ctx": "a", "endings": ["b"], "label": 0}\n{"ctx": "a", "endings": ["b"]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'label'"):
        read_hellaswag(path)


def test_lmforge_evaluate_scores_a_checkpoint_on_a_hellaswag_file(tmp_path, capsys):
    from flows.cli import main
    from lmtrain.models.bundle import attach_tokenizer
    from lmtrain.models.checkpoint import save_checkpoint
    from lmtrain.tokenizer import train_bpe

    tok = train_bpe(["the cat sat on the mat and the dog sat on the log"] * 4, vocab_size=280)
    tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    model = build_model("gpt", {"block_size": 64, "n_layer": 1, "n_head": 1, "n_embd": 8}, vocab_size=tok.vocab_size)
    save_checkpoint(tmp_path / "ckpt", model)
    attach_tokenizer(tmp_path / "ckpt", tmp_path / "tok")
    path = tmp_path / "hs.jsonl"
    path.write_text("\n".join(json.dumps({"ctx": "the cat", "endings": ["sat", "dog", "mat"], "label": i % 3})
                              for i in range(6)) + "\n")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ckpt"), "--hellaswag", str(path),
                 "--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["n"] == 6 and result["acc"] == pytest.approx(1 / 3)  # one ending wins every identical item
    assert json.loads(capsys.readouterr().out)["acc_norm"] == result["acc_norm"]
