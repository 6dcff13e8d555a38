"""Language ID with the real lid.176.ftz: English kept, other languages rejected as `lang`."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lmdata.fetch import fetch_langid_model
from lmdata.filters.langid import LangIdConfig, langid_filter, predict_languages

ROOT = Path(__file__).resolve().parents[1]

TEXTS = {
    "en": "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "fr": "Le mot de passe doit contenir au moins huit caractères et ne peut pas être entièrement numérique.",
    "de": "Das Passwort muss mindestens acht Zeichen enthalten und darf nicht nur aus Ziffern bestehen.",
    "es": "La contraseña debe contener al menos ocho caracteres y no puede ser completamente numérica.",
    "ru": "Пароль должен содержать не менее восьми символов и не может состоять только из цифр.",
    "ja": "パスワードは8文字以上である必要があり、数字だけにすることはできません。",
}


@pytest.fixture(scope="session")
def lid_model() -> Path:
    return fetch_langid_model(ROOT / ".cache" / "lid" / "lid.176.ftz")


def test_predicts_each_language(lid_model):
    langs, scores = predict_languages(list(TEXTS.values()), lid_model)
    assert langs == list(TEXTS)
    assert all(0.5 < s <= 1.0 for s in scores)


def test_keeps_english_and_rejects_others_with_reason_lang(lid_model):
    df = pl.DataFrame({"id": list(TEXTS), "text": [t + "\n" + t for t in TEXTS.values()]})
    res = langid_filter(df, LangIdConfig(model_path=str(lid_model)))
    assert res.kept["id"].to_list() == ["en"]
    assert res.kept["lang"].to_list() == ["en"] and res.kept["lang_score"][0] > 0.5
    assert res.rejected["reason"].unique().to_list() == ["lang"]
    assert res.rejected["reason_detail"].to_list() == ["fr", "de", "es", "ru", "ja"]
    assert res.rejected["reason_value"].min() > 0.5
    assert res.kept.height + res.rejected.height == df.height


def test_min_score_rejects_uncertain_text(lid_model):
    df = pl.DataFrame({"id": ["x"], "text": ["ok 42 ::"]})
    res = langid_filter(df, LangIdConfig(model_path=str(lid_model), min_score=0.99))
    assert res.rejected["reason"].to_list() == ["lang"]
    assert res.rejected["reason_value"][0] < 0.99


def test_named_fields_of_instruction_records(lid_model):
    df = pl.DataFrame({"id": ["1", "2"], "prompt": [TEXTS["en"], TEXTS["en"]],
                       "response": [TEXTS["en"], TEXTS["de"]]})
    res = langid_filter(df, LangIdConfig(model_path=str(lid_model), fields=["prompt", "response"]))
    assert res.kept["id"].to_list() == ["1"]
    assert res.rejected["reason_detail"].to_list() == ["response:de"]


def test_missing_model_and_bad_config_fail_clearly(tmp_path):
    df = pl.DataFrame({"id": ["1"], "text": ["hello there"]})
    with pytest.raises(FileNotFoundError, match="lid.176"):
        langid_filter(df, LangIdConfig(model_path=str(tmp_path / "lid.176.bin")))
    with pytest.raises(ValueError, match="min_score"):
        LangIdConfig.from_dict({"min_score": "high"})
    with pytest.raises(ValueError, match="max_chars"):
        LangIdConfig.from_dict({"max_chars": -1})
    with pytest.raises(ValueError, match="not in the data"):
        langid_filter(df, LangIdConfig(fields=["response"]))


def test_max_chars_predicts_on_a_prefix_only(lid_model):
    """An English opening then a long French body: whole text French, the first 200 characters English."""
    text = TEXTS["en"] + " " + " ".join([TEXTS["fr"]] * 20)
    df = pl.DataFrame({"id": ["mixed", "short"], "text": [text, TEXTS["de"]]})
    whole = langid_filter(df, LangIdConfig(model_path=str(lid_model)))
    prefix = langid_filter(df, LangIdConfig(model_path=str(lid_model), max_chars=len(TEXTS["en"])))
    assert whole.rejected["reason_detail"].to_list() == ["fr", "de"]
    assert prefix.kept["id"].to_list() == ["mixed"] and prefix.kept["lang"].to_list() == ["en"]
    assert prefix.rejected["reason_detail"].to_list() == ["de"]  # shorter than max_chars: whole text, as before
    assert predict_languages([TEXTS["de"]], lid_model, max_chars=10_000) == predict_languages([TEXTS["de"]], lid_model)
