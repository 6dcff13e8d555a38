"""Pictures in the Prefect UI: a PNG embedded in a markdown artifact as a data URI (the UI's markdown
renderer shows it inline; no file server needed, nothing loaded from the web)."""

from __future__ import annotations

import base64
from pathlib import Path

from prefect.artifacts import create_markdown_artifact


def image_markdown(png: Path, title: str, caption: str = "") -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode()
    text = f"# {title}\n\n![{title}](data:image/png;base64,{data})\n"
    return text + (f"\n{caption}\n" if caption else "")


def publish_image(key: str, png: Path, title: str, description: str, caption: str = "") -> bool:
    """A markdown artifact showing `png`; skipped (False) when the file was not rendered."""
    if not Path(png).exists():
        return False
    create_markdown_artifact(key=key, markdown=image_markdown(png, title, caption), description=description)
    return True
