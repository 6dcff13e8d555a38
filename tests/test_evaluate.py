"""Evaluation: whole-split loss and bpb, windows covering each token once, multiple choice, and `lmforge evaluate`
on a local task file (read and scored by lmtrain.evaluate, as the evaluate stage does)."""

import json
import math

import numpy as np
import pytest
import torch

from lmtrain.data.shards import TokenShards, write_shard
from lmtrain.data.windows import eval_windows
from lmtrain.models.registry import build_model
from lmtrain.pretrain.evaluate import evaluate_loss, multiple_choice_accuracy, multiple_choice_items


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


def test_lmforge_evaluate_scores_a_crafted_hellaswag_file_as_the_stage_does(tmp_path, capsys):
    """A model that scores the right endings higher gets 1.0, one that prefers the wrong ones 0.0; the same
    numbers as lmtrain.evaluate's reader and scoring (one code path with the evaluate stage)."""
    from flows.cli import main
    from lmtrain.evaluate.scoring import score_task
    from lmtrain.evaluate.tasks import TaskSpec, read_task
    from lmtrain.tokenizer import train_char
    from tests.test_evaluate_suite import CRAFTED, alphabet, bigram_knowing, tiny_bundle, write_jsonl

    tok = train_char([alphabet()])
    path = write_jsonl(tmp_path / "hs.jsonl", CRAFTED["hellaswag"])
    items = read_task(TaskSpec("hs", "hellaswag", str(path)))
    right = [it["context"][-1] + it["choices"][it["label"]] for it in items]
    wrong = [it["context"][-1] + it["choices"][(it["label"] + 1) % len(it["choices"])] for it in items]
    for name, texts, acc in (("knows", right, 1.0), ("decoy", wrong, 0.0)):
        tiny_bundle(tmp_path / name, tok, texts)
        assert main(["evaluate", "--checkpoint", str(tmp_path / name), "--hellaswag", str(path),
                     "--out", str(tmp_path / f"{name}.json")]) == 0
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert json.loads(capsys.readouterr().out) == result
        assert result["acc"] == result["acc_norm"] == acc and result["n"] == 2 and result["format"] == "hellaswag"
        expected = score_task(bigram_knowing(texts, tok), tok, items, "multiple_choice", 8)
        assert {k: result[k] for k in expected} == expected
    assert main(["evaluate", "--checkpoint", str(tmp_path / "knows"), "--task", str(path), "--format", "hellaswag",
                 "--max-items", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1


def test_lmforge_evaluate_names_the_bad_row_in_one_line(tmp_path, capsys):
    from flows.cli import main
    from lmtrain.tokenizer import train_char
    from tests.test_evaluate_suite import alphabet, tiny_bundle

    tiny_bundle(tmp_path / "ckpt", train_char([alphabet()]), ["abc"])
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n{"ctx": "a", "endings": ["b", "c"]}\n')
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ckpt"), "--hellaswag", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: field 'label' missing or not an integer" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ckpt"), "--task", str(path), "--format", "piqa"]) == 2
    assert f"{path}:1: field 'sol1'" in capsys.readouterr().err
