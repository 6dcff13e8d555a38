"""SFT: the loss mask, token by token; padding that changes nothing; reading instruction shards."""

import json

import polars as pl
import pytest
import torch

from lmtrain.align.common import pad_batch
from lmtrain.align.sft import sft_example, truncate_turns
from lmtrain.data.tables import read_conversations
from lmtrain.models.gpt import GPT, GPTConfig
from lmtrain.tokenizer import train_bpe
from lmtrain.tokenizer.chat import ASSISTANT, END_OF_TURN, EOT, SYSTEM, USER


@pytest.fixture(scope="module")
def tok():
    return train_bpe(["Explain loops. A loop repeats a block.", "What is a list? A list holds items."] * 4,
                     vocab_size=290)


def test_loss_mask_targets_only_assistant_tokens_and_their_end(tok):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain loops."},
            {"role": "assistant", "content": "A loop repeats."}, {"role": "user", "content": "And lists?"},
            {"role": "assistant", "content": "A list holds items."}]
    sp = tok.special_tokens
    enc = tok.encode
    ids = ([sp[EOT], sp[SYSTEM], *enc("Be brief."), sp[END_OF_TURN], sp[USER], *enc("Explain loops."), sp[END_OF_TURN],
            sp[ASSISTANT]] + enc("A loop repeats.") + [sp[END_OF_TURN], sp[USER], *enc("And lists?"), sp[END_OF_TURN],
                                                       sp[ASSISTANT]] + enc("A list holds items.") + [sp[END_OF_TURN]])
    learn = set()  # positions (in ids) of tokens the model must produce
    pos = ids.index(sp[ASSISTANT]) + 1
    learn.update(range(pos, pos + len(enc("A loop repeats.")) + 1))
    pos = len(ids) - len(enc("A list holds items.")) - 1
    learn.update(range(pos, len(ids)))
    x, y = sft_example(conv, tok, max_len=1000)
    assert x == ids[:-1]
    for i, target in enumerate(y):  # target i is the token at position i + 1
        assert target == (ids[i + 1] if i + 1 in learn else -1), f"position {i}"
    assert sum(t != -1 for t in y) == len(learn)


def test_truncation_keeps_mask_aligned(tok):
    conv = [{"role": "user", "content": "Explain loops."}, {"role": "assistant", "content": "A loop repeats a block."}]
    x, y = sft_example(conv, tok, max_len=8)
    full_x, full_y = sft_example(conv, tok, max_len=1000)
    assert len(x) == len(y) == 8 and x == full_x[:8] and y == full_y[:8]
    cut = truncate_turns(conv, 2, tok)
    assert cut[0] == conv[0] and tok.encode(cut[1]["content"]) == tok.encode(conv[1]["content"])[:2]


def test_right_padding_leaves_real_positions_unchanged():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    short, long = [3, 4, 5], [6, 7, 8, 9, 10, 11]
    x = pad_batch([short, long], pad=0)
    with torch.no_grad():
        batched, _ = model(x)
        alone, _ = model(torch.tensor([short]))
    torch.testing.assert_close(batched[0, :3], alone[0], atol=1e-5, rtol=1e-5)


def test_read_conversations_from_messages_or_prompt_response(tmp_path):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pl.DataFrame({"id": ["b", "a"], "split": ["train", "eval"], "prompt": ["p", None], "response": ["r", None],
                  "messages": [None, json.dumps(msgs)]}).write_parquet(tmp_path / "s.parquet")
    assert read_conversations(tmp_path, "eval") == [msgs]
    assert read_conversations(tmp_path, "train") == [[{"role": "user", "content": "p"},
                                                      {"role": "assistant", "content": "r"}]]
    pl.DataFrame({"id": ["c"], "split": ["train"], "prompt": [None], "response": [None],
                  "messages": ["not json"]}).write_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"t.parquet:0 \(id c\): field 'messages'"):
        read_conversations(tmp_path)


def test_conversations_read_from_jsonl_where_there_is_no_parquet(tmp_path):
    """A bare GPU image has no pyarrow: the GPU check carries its alignment data as JSONL."""
    rows = [{"id": "b", "split": "train", "prompt": "hi", "response": "hello", "messages": None},
            {"id": "a", "split": "eval", "prompt": None, "response": None,
             "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}]
    (tmp_path / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_conversations(tmp_path, "train") == [[{"role": "user", "content": "hi"},
                                                      {"role": "assistant", "content": "hello"}]]
    assert read_conversations(tmp_path, "eval")[0][1]["content"] == "r"
