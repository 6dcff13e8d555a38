"""Pictures reach the Prefect UI as markdown with the PNG inline."""

import base64
import re

from flows._artifacts import image_markdown


def test_image_markdown_embeds_the_png_bytes(tmp_path):
    png = tmp_path / "loss.png"
    payload = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    png.write_bytes(payload)
    md = image_markdown(png, "Loss curves", caption="bits per byte on the evaluation set")
    match = re.search(r"!\[Loss curves\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert match, md[:200]
    assert base64.b64decode(match.group(1)) == payload
    assert md.startswith("# Loss curves") and md.rstrip().endswith("bits per byte on the evaluation set")
