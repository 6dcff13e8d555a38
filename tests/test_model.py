"""GPT and baselines: parameter counts, causality, KV cache equivalence, sampling filters."""

import pytest
import torch

from lmtrain.inference.generate import generate
from lmtrain.inference.sampling import sample as sample_next_token
from lmtrain.models.gpt import GPT, GPT_CONFIGS, GPTConfig
from lmtrain.models.registry import build_model

# HF transformers' GPT2LMHeadModel sizes (tied embeddings, 50257 tokens, 1024 positions)
KNOWN_GPT2_PARAMS = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
                     "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name", sorted(KNOWN_GPT2_PARAMS))
def test_gpt2_parameter_counts_match_known_sizes(name):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = GPT(GPTConfig(**GPT_CONFIGS[name]))
    assert model.num_params() == KNOWN_GPT2_PARAMS[name]


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16, **kw)).eval()


def test_gpt_is_causal():
    model = small_gpt()
    x = torch.randint(50, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 50  # change the future only
    a, _ = model(x)
    b, _ = model(y)
    torch.testing.assert_close(a[0, :8], b[0, :8])
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_kv_cache_matches_full_forward_prefill_then_steps():
    model = small_gpt()
    x = torch.randint(50, (2, 20))
    full, _ = model(x)
    cache = model.new_kv_cache(2)
    pre, _ = model(x[:, :7], kv_cache=cache)
    chunk, _ = model(x[:, 7:10], kv_cache=cache)  # several new tokens at once
    steps = [model(x[:, t:t + 1], kv_cache=cache)[0] for t in range(10, 20)]
    torch.testing.assert_close(torch.cat([pre, chunk, *steps], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 20


def test_cached_and_recomputed_generation_agree():
    model = small_gpt()
    prompt = torch.randint(50, (1, 5))
    a = generate(model, prompt, 20, temperature=0, use_cache=True)
    b = generate(model, prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(a, b)


def test_generation_longer_than_block_falls_back_to_cropping():
    model = small_gpt()
    out = generate(model, torch.zeros(1, 30, dtype=torch.long), 10, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 40)


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    top_k = {int(sample_next_token(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert top_k == {0, 1}
    # softmax mass: 0.72, 0.26, ... -> top_p 0.5 keeps only token 0
    top_p = {int(sample_next_token(logits, 1.0, top_p=0.5, generator=g)) for _ in range(50)}
    assert top_p == {0}


def test_residual_projection_init_is_scaled():
    model = GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=8, n_head=4, n_embd=256))
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 8) ** 0.5) < 0.001


@pytest.mark.parametrize("kind", ["bigram", "mlp", "gpt"])
def test_every_kind_shares_the_training_interface(kind):
    model = build_model(kind, "tiny", vocab_size=40)
    x = torch.randint(40, (4, model.block_size))
    logits, loss = model(x, torch.randint(40, (4, model.block_size)))
    assert logits.shape == (4, model.block_size, 40)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(40.0)).item(), abs=0.5)  # near uniform at init
    loss.backward()
    model.eval()
    assert generate(model, x[:1, :3], 5).shape == (1, 8)


def test_mlp_sees_only_its_context_window():
    model = build_model("mlp", "tiny", vocab_size=30).eval()
    k = model.config.context
    x = torch.randint(30, (1, 20))
    y = x.clone()
    y[0, 0] = (y[0, 0] + 1) % 30
    a, _ = model(x)
    b, _ = model(y)
    assert not torch.allclose(a[0, k - 1], b[0, k - 1])
    torch.testing.assert_close(a[0, k:], b[0, k:])  # token 0 is outside their window


class ByteTokenizer:
    def encode(self, s):
        return list(s.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


class ByteTokenizerWithBytes(ByteTokenizer):
    def decode_bytes(self, ids):
        return bytes(ids)


@pytest.mark.parametrize("tokenizer", [ByteTokenizer(), ByteTokenizerWithBytes()])
def test_streaming_never_splits_a_multibyte_character(tokenizer):
    from lmtrain.inference.generate import stream_text

    target = "é€!".encode()  # 2- and 3-byte characters, one byte per token
    model = build_model("bigram", "tiny", vocab_size=256)
    with torch.no_grad():
        chain = [ord("a"), *target]
        for a, b in zip(chain, chain[1:]):
            model.token_logits.weight[a, b] = 10.0  # a deterministic byte chain after the prompt "a"
    pieces = list(stream_text(model, tokenizer, "a", max_new_tokens=len(target), temperature=0))
    assert pieces == ["é", "€", "!"]


def test_flops_per_token_follows_6n_plus_attention():
    from lmtrain.models.flops import flops_per_token

    with torch.device("meta"):
        model = GPT(GPTConfig(**GPT_CONFIGS["gpt2"]))
    n = KNOWN_GPT2_PARAMS["gpt2"] - 1024 * 768  # the position table is a lookup, not a matmul
    assert flops_per_token(model, 1024) == 6 * n + 12 * 12 * 768 * 1024


def test_kv_cache_rows_of_different_lengths_match_separate_forwards():
    """One forward pass serves a cache whose rows each sit at their own position (the engine's batch)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    a, b = torch.randint(50, (1, 7)), torch.randint(50, (1, 4))
    nxt = torch.tensor([[3], [9]])
    with torch.no_grad():
        cache = model.new_kv_cache(2)
        model(a, kv_cache=cache, row_start=0)
        model(b, kv_cache=cache, row_start=1)  # prefill row 1 alone
        assert cache.lengths == [7, 4]
        both, _ = model(nxt, kv_cache=cache)  # one step for both rows, each at its own position
        alone_a, _ = model(torch.cat([a, nxt[:1]], 1))
        alone_b, _ = model(torch.cat([b, nxt[1:]], 1))
    torch.testing.assert_close(both[0, -1], alone_a[0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1, -1], alone_b[0, -1], atol=1e-5, rtol=1e-5)
    h = model.hidden_states(a)
    assert h.shape == (1, 7, 16)  # hidden states on request: what reward and value heads read


def test_kv_cache_is_kept_in_the_compute_dtype():
    model = GPT(GPTConfig(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16))
    assert model.new_kv_cache(1).k[0].dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_kv_cache(1)
        logits, _ = model(torch.randint(40, (1, 5)), kv_cache=cache)
    assert cache.k[0].dtype == torch.bfloat16 and logits.shape == (1, 5, 40)


def test_vocab_padding_keeps_the_vocabulary_visible():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=100, n_layer=1, n_head=2, n_embd=16, vocab_multiple=64))
    assert model.transformer.wte.weight.shape[0] == 128 and model.lm_head.weight.shape[0] == 128
    x = torch.randint(100, (2, 8))
    logits, loss = model(x, x)
    assert logits.shape == (2, 8, 100) and torch.isfinite(loss)
    assert generate(model, x[:, :3], 5).max() < 100
