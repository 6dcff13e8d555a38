"""HF transformers GPT-2 interop: weights both ways with equal logits; vocab.json/merges.txt tokenizer."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmtrain.inference.generate import generate  # noqa: E402
from lmtrain.models.gpt import GPT, GPTConfig  # noqa: E402
from lmtrain.models.hf import GPT2Tokenizer, _bytes_to_unicode, export_hf, import_hf  # noqa: E402


def random_hf_model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_hf_model_imports_with_equal_logits(tmp_path):
    hf = random_hf_model()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours, tokenizer = import_hf(tmp_path)
    x = torch.randint(300, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], hf(x).logits, atol=1e-5, rtol=1e-5)
    assert tokenizer is None  # no vocab.json / merges.txt in this folder


def test_exported_gpt_loads_in_transformers_with_equal_logits(tmp_path):
    torch.manual_seed(1)
    ours = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=2, n_head=2, n_embd=16)).eval()
    export_hf(ours, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = torch.randint(300, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x)[0], atol=1e-5, rtol=1e-5)
    back, _ = import_hf(tmp_path)  # and the round trip is exact
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), back.state_dict().values()))


def write_tiny_bpe(folder):
    chars = list(_bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("e", "r"), ("Ġthe", "r"), ("l", "l")]
    vocab = {c: i for i, c in enumerate(chars)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")


def test_tokenizer_encodes_like_transformers_and_round_trips(tmp_path):
    write_tiny_bpe(tmp_path)
    ours = GPT2Tokenizer(tmp_path / "vocab.json", tmp_path / "merges.txt")
    theirs = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    text = "the other there, héllo  wörld 123! ... they'll\n\nthe"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.decode(ours.encode(text)) == text
    assert ours.eot_id == 262


def test_imported_folder_with_tokenizer_can_be_sampled(tmp_path):
    random_hf_model().save_pretrained(tmp_path, safe_serialization=True)
    write_tiny_bpe(tmp_path)
    model, tokenizer = import_hf(tmp_path)
    ids = tokenizer.encode("hello there")
    out = generate(model, torch.tensor([ids]), 5, generator=torch.Generator().manual_seed(0))
    assert isinstance(tokenizer.decode(out[0].tolist()), str)


def test_padded_vocabulary_exports_only_real_tokens(tmp_path):
    torch.manual_seed(2)
    ours = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=1, n_head=2, n_embd=16, vocab_multiple=64)).eval()
    assert ours.transformer.wte.weight.shape[0] == 320
    export_hf(ours, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    x = torch.randint(300, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x)[0], atol=1e-5, rtol=1e-5)
