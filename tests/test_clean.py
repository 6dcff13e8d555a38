"""The clean step on crafted documents: MediaWiki markup to text, redirects and disambiguation
pages rejected as such, HTML reduced to its main text, mojibake repaired; each change counted."""

from __future__ import annotations

import json

import polars as pl
import pytest

from lmdata.clean import CleanConfig, clean_stats, clean_step, detect_markup
from lmdata.readers import ConfigError
from lmdata.text import hash_hex

ARTICLE = """{{Short description|Country in East Africa}}
{{Infobox country
| conventional_long_name = Republic of Kenya
| capital = [[Nairobi]]
}}
'''Kenya''' ({{IPA-sw|ˈkɛnja|pron}}), officially the '''Republic of Kenya''', is a country in \
[[East Africa]].<ref>{{cite web |url=http://example.org |title=Kenya facts}}</ref> It borders \
[[Ethiopia|the Ethiopian state]] &amp; [[Somalia]] and has a coast on the &lt;Indian Ocean&gt;.<ref name="a"/>
[[File:Kenya map.png|thumb|right|A map of [[Kenya]]]]

== History ==
The ''history'' of Kenya&nbsp;is long.<!-- editors: expand -->
{| class="wikitable"
|-
! Year !! Event
|-
| 1963 || Independence
|}
* The first item names [[Mombasa]].
* The second says {{lang|sw|Jambo}}.

== References ==
{{reflist}}
* {{cite book |title=A History of Kenya |year=1990}}
[[Category:Countries in Africa]]
[[de:Kenia]]
"""


def frame(texts: list[str], metas: list[dict] | None = None) -> pl.DataFrame:
    n = len(texts)
    return pl.DataFrame({
        "id": [f"id{i}" for i in range(n)], "content_hash": [hash_hex(t) for t in texts],
        "source": ["wiki"] * n, "locator": [f"f:{i}" for i in range(n)], "group": [f"g{i}" for i in range(n)],
        "split": ["train"] * n, "text": texts, "n_bytes": [len(t.encode()) for t in texts],
        "meta": [json.dumps(m) for m in (metas or [{}] * n)],
    })


def test_wiki_markup_becomes_text():
    res = clean_step(frame([ARTICLE]), CleanConfig())
    assert res.rejected.height == 0
    text = res.kept["text"][0]
    for leftover in ("{{", "}}", "[[", "]]", "'''", "''", "&lt;", "&amp;", "<ref", "{|", "thumb", "Category",
                     "de:Kenia", "cite", "Infobox", "editors", "1963", "A History of Kenya"):
        assert leftover not in text, leftover
    assert text.startswith("Kenya, officially the Republic of Kenya, is a country in East Africa.")
    assert "It borders the Ethiopian state & Somalia and has a coast on the <Indian Ocean>." in text
    assert "\nHistory\n" in text and "The first item names Mombasa." in text and "says Jambo." in text
    row = res.kept.row(0, named=True)
    assert row["n_bytes"] == len(text.encode()) and row["content_hash"] == hash_hex(text)
    assert row["id"] == "id0"  # identity is kept across stages
    assert json.loads(row["clean"])["wikitext"] == len(ARTICLE.encode()) - len(text.encode())


@pytest.mark.parametrize("page, target", [
    ("#REDIRECT [[Africa]]", "Africa"),
    ("#redirect[[United Kingdom#History|UK]]\n{{R from abbreviation}}", "United Kingdom#History"),
    ("#WEITERLEITUNG [[Afrika]]", "Afrika"),
    ("#ПЕРЕНАПРАВЛЕНИЕ [[Африка]]", "Африка"),
])
def test_redirects_are_rejected_as_redirect(page, target):
    res = clean_step(frame([page, ARTICLE]), CleanConfig())
    assert res.kept["id"].to_list() == ["id1"]
    rej = res.rejected.row(0, named=True)
    assert (rej["reason"], rej["reason_detail"]) == ("redirect", f"redirect to [[{target}]]")
    assert rej["text"] == page  # the rejected row keeps what was read


def test_disambiguation_pages_are_rejected():
    page = "'''Mercury''' may refer to:\n* [[Mercury (planet)]]\n* [[Mercury (element)]]\n\n{{disambiguation}}"
    res = clean_step(frame([page]), CleanConfig())
    assert res.rejected["reason"].to_list() == ["disambiguation"]
    assert clean_step(frame([page]), CleanConfig(disambiguation=False)).kept.height == 1


HTML = ("<!DOCTYPE html><html><head><title>Rivers</title><script>var x = 1;</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About us</a> | <a href='/login'>Log in</a></nav>"
        "<article><h1>Rivers of Kenya</h1><p>The Tana River is the longest river in Kenya. It flows "
        "through several regions before it reaches the Indian Ocean, and it feeds two large dams.</p>"
        "<p>Farms and towns along its banks depend on it for water, and its delta is a wetland of "
        "international importance for birds.</p></article>"
        "<footer>Copyright 2024 Example Corp. All rights reserved. Privacy policy.</footer></body></html>")


def test_html_is_reduced_to_main_text():
    res = clean_step(frame([HTML], [{"markup": "html"}]), CleanConfig())
    text = res.kept["text"][0]
    assert "The Tana River is the longest river in Kenya." in text
    assert "wetland of international importance for birds." in text
    for boiler in ("<", "Home", "About us", "Copyright", "var x"):
        assert boiler not in text, boiler
    assert detect_markup(HTML) == "html"
    assert clean_stats(res.kept)["html"]["docs_changed"] == 1


def test_mojibake_is_repaired_and_counted():
    texts = ["The cafÃ© is nice â€” isnâ€™t it?", "Plain “curly” text stays as it is — ﬁne."]
    res = clean_step(frame(texts), CleanConfig())
    assert res.kept["text"].to_list() == ["The café is nice — isn’t it?", texts[1]]
    stats = clean_stats(res.kept)
    assert stats["mojibake"] == {"docs_changed": 1, "bytes_removed": len(texts[0].encode()) - len(
        "The café is nice — isn’t it?".encode())}
    assert res.kept["clean"].to_list()[1] == "{}"


def test_markup_from_the_source_spec_wins_over_detection():
    res = clean_step(frame([ARTICLE, ARTICLE], [{"markup": "none"}, {}]), CleanConfig(mojibake=False))
    assert res.kept["text"][0] == ARTICLE and res.kept["text"][1] != ARTICLE
    res = clean_step(frame([ARTICLE]), CleanConfig(markup="none", mojibake=False))
    assert res.kept["text"][0] == ARTICLE  # auto-detection off


def test_plain_text_with_braces_is_untouched():
    texts = ["Use '{{}}'.format() to print braces, and a[[0]] to index a nested list.",
             "ROMEO:\nBut, soft! what light through yonder window breaks?"]
    assert all(detect_markup(t) == "none" for t in texts)
    assert clean_step(frame(texts), CleanConfig()).kept["text"].to_list() == texts


def test_empty_after_cleaning_is_rejected():
    res = clean_step(frame(["{{Infobox person|name=X}}\n[[Category:People]]"]), CleanConfig())
    assert res.rejected["reason"].to_list() == ["empty_after_clean"]


def test_unknown_or_mistyped_settings_fail_before_work():
    with pytest.raises(ConfigError, match="unknown clean setting.*'wikitxt'"):
        CleanConfig.from_dict({"wikitxt": True})
    with pytest.raises(ConfigError, match="evalset.clean.html must be true or false"):
        CleanConfig.from_dict({"html": "yes"}, where="evalset.clean")
    with pytest.raises(ConfigError, match="clean.markup must be one of"):
        CleanConfig.from_dict({"markup": "markdown"})
    assert CleanConfig.from_dict({"markup": "wikitext"}).markup == "wikitext"


def test_instruction_turns_are_cleaned_and_text_rebuilt():
    msgs = [{"role": "user", "content": "What is '''Kenya'''?"}, {"role": "assistant",
            "content": "A country in [[East Africa]] &amp; a member of the [[African Union|AU]]."}]
    df = frame(["x"], [{"markup": "wikitext"}]).with_columns(
        pl.lit(json.dumps(msgs)).alias("messages"), pl.lit("p").alias("prompt"), pl.lit("r").alias("response"))
    row = clean_step(df, CleanConfig()).kept.row(0, named=True)
    assert row["prompt"] == "What is Kenya?"
    assert row["response"] == "A country in East Africa & a member of the AU."
    assert row["text"] == "What is Kenya?\n\nA country in East Africa & a member of the AU."
    assert json.loads(row["messages"])[1]["content"] == row["response"]


def test_clean_shard_reads_only_training_rows_and_conserves_them(tmp_path):
    from lmdata.clean import clean_shard
    from lmdata.ingest import IngestConfig, ingest_source
    from lmdata.shards import list_shards

    pages = [ARTICLE.replace("Kenya", f"Kenya{i}") for i in range(30)] + [f"#REDIRECT [[Page {i}]]" for i in range(10)]
    src = tmp_path / "wiki.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(pages)))
    params = {"ingest": {"eval_fraction": 0.3, "corpus": {"sources": [
        {"type": "jsonl", "source": "wiki", "path": str(src), "markup": "wikitext"}]}}}
    cfg = IngestConfig.from_params(params, "corpus")
    ing = ingest_source(cfg.sources[0], "corpus", cfg, tmp_path / "ingest")
    stats = [clean_shard(p, tmp_path / "clean", "corpus", CleanConfig()) for p in list_shards(tmp_path / "ingest")]
    rows_in = sum(s["rows_in"] for s in stats)
    assert rows_in == ing["splits"]["train"] and sum(s["eval_rows_skipped"] for s in stats) == ing["splits"]["eval"]
    kept = pl.concat([pl.read_parquet(p) for p in list_shards(tmp_path / "clean")])
    rejected = pl.read_parquet(tmp_path / "clean" / "rejected" / "*.parquet")
    assert kept.height + rejected.height == rows_in and set(kept["split"]) == {"train"}
    assert set(rejected["reason"]) == {"redirect"} and rejected.height == sum(
        1 for t, s in zip(*pl.concat([pl.read_parquet(p) for p in list_shards(tmp_path / "ingest")])
                          .select("text", "split")) if t.startswith("#REDIRECT") and s == "train")
    assert not any(m in t for t in kept["text"] for m in ("{{", "[[", "'''", "&lt;"))
    assert stats[0]["steps"]["wikitext"]["docs_changed"] == kept.height


PROSE = [
    "The river rises in the highlands west of the capital and flows east for about four hundred miles "
    "before it reaches the sea. Along its course it passes through forests, farmland and two large towns, "
    "and it has long been the main route for trade between the coast and the interior.",
    "In the early years of the colony, traders used small boats to carry grain and cloth down the river. "
    "Later a railway was built beside it, and the old river ports slowly lost their importance, although "
    "fishing remains a common trade in the villages along the lower valley.",
    "Today the river is protected for much of its length. Its delta is an important wetland for birds, and "
    "several national parks lie on its banks, where visitors can see elephants, hippos and many kinds of "
    "antelope during the dry season.",
]


def wiki_article(title: str) -> str:
    cite = "<ref>{{cite book |last=Smith |first=John |title=Rivers of the East |publisher=Example Press |year=1990 |page=12}}</ref>"
    body = "\n\n".join(f"{p}{cite}" for p in PROSE)
    return (f"{{{{Infobox river\n| name = {title}\n| length = 400 mi\n}}}}\n'''{title}''' is a river in "
            f"[[East Africa]].{cite}\n\n== Course ==\n{body}\n\n== References ==\n{{{{reflist}}}}\n"
            f"* {{{{cite web |url=http://example.org |title={title} facts}}}}\n[[Category:Rivers]]")


def test_cleaned_wiki_articles_pass_the_heuristics_that_their_markup_failed():
    from lmdata.filters.heuristics import HeuristicsConfig, heuristic_filter

    raw = frame([wiki_article(t) for t in ("Tana River", "Athi River", "Ewaso Ng'iro")])
    before = heuristic_filter(raw, HeuristicsConfig())
    assert before.kept.height == 0  # the markup, not the prose, is what fails
    after = heuristic_filter(clean_step(raw, CleanConfig()).kept.drop("clean"), HeuristicsConfig())
    assert after.rejected.height == 0, after.rejected.select("reason", "reason_value").to_dicts()
