"""A server a user can expose: the API key (as vLLM's --api-key) and OpenAI's error body for every
status, driven by the official `openai` client and plain HTTP over loopback."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from lmtrain.inference.serve import build_app, is_loopback  # noqa: E402
from tests.test_serve import bundle, serving  # noqa: E402,F401  (the tiny GPT + BPE checkpoint)

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def keyed(bundle):  # noqa: F811
    app = build_app(bundle, model_name="tiny-test", max_batch_size=2, max_waiting=2, api_key=KEY)
    with serving(app) as url:
        yield url


def openai_error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_without_the_key_the_openai_client_gets_401(keyed):
    client = openai.OpenAI(base_url=keyed + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as err:
        client.completions.create(model="tiny-test", prompt="ROMEO:", max_tokens=4)
    assert err.value.status_code == 401
    r = httpx.post(keyed + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 401 and openai_error(r)["code"] == "invalid_api_key"


def test_with_the_key_the_openai_client_gets_200(keyed):
    client = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0, timeout=30)
    out = client.completions.create(model="tiny-test", prompt="ROMEO:", max_tokens=4, temperature=0)
    assert out.choices[0].finish_reason in ("length", "stop") and out.usage.completion_tokens >= 1
    assert [m.id for m in client.models.list().data] == ["tiny-test"]


def test_health_needs_no_key(keyed):
    assert httpx.get(keyed + "/health").status_code == 200


def test_unknown_path_and_wrong_method_answer_in_openai_shape(keyed):
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(keyed + "/v1/embeddings", headers=auth)
    assert r.status_code == 404 and "/v1/embeddings" in openai_error(r)["message"]
    r = httpx.get(keyed + "/v1/completions", headers=auth)
    assert r.status_code == 405 and "GET" in openai_error(r)["message"]


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_binding_a_public_address_without_a_key_warns(bundle):  # noqa: F811
    """The warning is printed before the model loads; the bind itself is never attempted here (a
    nonexistent checkpoint stops the command right after the check)."""
    code = ("import sys; from lmtrain.inference.serve import run\n"
            "try:\n    run('/nonexistent/ckpt', host='0.0.0.0', port=1)\nexcept Exception:\n    pass\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "without an API key" in out.stderr and "LMFORGE_API_KEY" in out.stderr
