"""The OpenAI-compatible server, driven by the official `openai` client over loopback.

A tiny random GPT and a tiny BPE (trained on pydoc topics) saved as a bundle; the server runs in a thread
on a free loopback port. Random weights say nothing about quality: the tests check the protocol, the
batching (greedy output under load equals output alone), the caps and the error answers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from lmtrain.inference.engine import wait_idle  # noqa: E402
from lmtrain.inference.serve import build_app  # noqa: E402
from lmtrain.models.bundle import attach_tokenizer  # noqa: E402
from lmtrain.models.checkpoint import save_checkpoint  # noqa: E402
from lmtrain.models.registry import build_model  # noqa: E402
from lmtrain.tokenizer import train_bpe  # noqa: E402

MODEL = "tiny-test"
CONTEXT = 512


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("serve")
    tok = train_bpe([topics[k] for k in sorted(topics)[:20]], vocab_size=600)
    tok.save(root / "tok")
    torch.manual_seed(0)
    model = build_model("gpt", dict(n_layer=2, n_head=2, n_embd=32, block_size=CONTEXT, dropout=0.0),
                        vocab_size=tok.vocab_size)
    save_checkpoint(root / "ckpt", model)
    attach_tokenizer(root / "ckpt", root / "tok")
    return root / "ckpt"


@contextlib.contextmanager
def serving(app):
    """Run `app` with uvicorn in a thread on a free loopback port; yields its base URL."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start in 30 s"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def server(bundle):
    """(base_url, app) of a server with a cap of 4 running + 8 waiting requests."""
    app = build_app(bundle, model_name=MODEL, max_batch_size=4, max_waiting=8)
    with serving(app) as url:
        yield url, app


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=30)


def engine(server):
    return server[1].state.server.engine


def test_completion(client):
    r = client.completions.create(model=MODEL, prompt="def f(x):", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens > 0 and 1 <= r.usage.completion_tokens <= 12
    assert isinstance(r.choices[0].text, str)


def test_completion_stream_equals_non_stream(client):
    kw = dict(model=MODEL, prompt="The class statement", max_tokens=20, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_chat_and_chat_stream(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a lambda?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("length", "stop")
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=15, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_stop_string_cuts_the_text(client):
    kw = dict(model=MODEL, prompt="for i in range(3):", max_tokens=40, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    stop = full[5:8]  # a string the greedy continuation is known to contain
    cut = client.completions.create(stop=[stop], **kw).choices[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=stop, stream=True, **kw))
    assert streamed == cut.text


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and health["max_batch_size"] == 4


def test_two_streams_overlap_in_time(server, client):
    """Both streams are decoded in the same steps: each one's first chunk arrives before the other's last."""
    eng = engine(server)
    times: dict[str, list[float]] = {"a": [], "b": []}
    eng.pause()  # both requests queue up, then join the batch together
    try:
        streams = {name: client.completions.create(model=MODEL, prompt=f"{name} = 1", max_tokens=150,
                                                   temperature=0, stream=True) for name in times}
    finally:
        eng.resume()

    def read(name):
        for _ in streams[name]:
            times[name].append(time.monotonic())

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(read, times))
    a, b = times["a"], times["b"]
    assert len(a) > 10 and len(b) > 10
    assert a[0] < b[-1] and b[0] < a[-1]


def test_malformed_requests_get_4xx_with_message(server, client):
    url = server[0] + "/v1/completions"
    bad_json = httpx.post(url, content=b'{"prompt": "hi", ', headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "invalid JSON" in bad_json.json()["error"]["message"]
    cases = {
        "negative max_tokens": ({"prompt": "hi", "max_tokens": -5}, 400, "max_tokens"),
        "huge max_tokens": ({"prompt": "hi", "max_tokens": 10**9}, 400, "context"),
        "prompt over context": ({"prompt": "word " * 2000, "max_tokens": 1}, 400, "context"),
        "missing prompt": ({"max_tokens": 3}, 400, "prompt"),
        "temperature type": ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
        "unknown model": ({"model": "gpt-9", "prompt": "hi"}, 404, "gpt-9"),
    }
    for name, (body, status, word) in cases.items():
        r = httpx.post(url, json=body)
        assert r.status_code == status, (name, r.text)
        assert word in r.json()["error"]["message"], (name, r.text)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])


def test_keeps_serving_after_client_disconnects_mid_stream(server, client):
    eng = engine(server)
    before = eng.load()["cancelled"]
    with httpx.stream("POST", server[0] + "/v1/completions",
                      json={"model": MODEL, "prompt": "x", "max_tokens": CONTEXT - 10, "stream": True}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    # the connection is closed after one chunk: the engine frees the request's slot long before its budget
    assert wait_idle(eng, timeout=20)
    assert eng.load()["cancelled"] == before + 1
    r = client.completions.create(model=MODEL, prompt="still there?", max_tokens=5)
    assert r.usage.completion_tokens >= 1
    assert httpx.get(server[0] + "/health").status_code == 200


def test_cap_answers_429_beyond_it(bundle):
    app = build_app(bundle, model_name=MODEL, max_batch_size=1, max_waiting=1)
    eng = app.state.server.engine
    from fastapi.testclient import TestClient

    with TestClient(app) as http:
        eng.pause()
        try:
            # paused: the first two requests (1 running slot + 1 waiting) queue; a third is refused
            with ThreadPoolExecutor(2) as pool:
                pending = [pool.submit(http.post, "/v1/completions", json={"prompt": "a", "max_tokens": 3})
                           for _ in range(2)]
                deadline = time.monotonic() + 10
                while eng.load()["waiting"] < 2:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                refused = http.post("/v1/completions", json={"prompt": "a", "max_tokens": 3})
                eng.resume()
                served = [f.result(timeout=20) for f in pending]
        finally:
            eng.resume()
    assert refused.status_code == 429 and "busy" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"
    assert [r.status_code for r in served] == [200, 200]


def test_bounded_concurrent_load_matches_requests_served_alone(server, client):
    """12 clients at once (cap 4 running + 8 waiting): all answered, greedy text as when served alone."""
    prompts = [f"import os{i}" for i in range(12)]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0).choices[0].text
             for p in prompts[:3]]

    def ask(p):
        return client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0).choices[0]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(ask, prompts))
    assert all(r.finish_reason in ("length", "stop") for r in results)
    assert [r.text for r in results[:3]] == alone
    assert wait_idle(engine(server))


def test_sample_at_follows_each_rows_settings():
    """Greedy rows take the argmax; sampled rows follow softmax(logits / T) within their top-k / top-p set."""
    from lmtrain.inference.sampling import sample_at

    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(4, 1)
    n = 4000
    draws = {row: [] for row in range(4)}
    for _ in range(n // 4):
        toks = sample_at(logits, [0.0, 1.0, 1.0, 1.0], [None, None, 2, None], [None, None, None, 0.7],
                         torch.rand(4)).tolist()
        for row, t in enumerate(toks):
            draws[row].append(t)
    assert set(draws[0]) == {0}
    freq = torch.bincount(torch.tensor(draws[1]), minlength=4).float() / len(draws[1])
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.05)
    assert set(draws[2]) == {0, 1}  # top-k 2
    assert set(draws[3]) == {0, 1}  # nucleus 0.7: p(0) = 0.64 < 0.7, so token 1 is in, token 2 is not


def test_serve_command_binds_loopback_by_default():
    import argparse

    from lmtrain.inference.serve import add_serve_command

    parser = argparse.ArgumentParser(prog="lmforge")
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--checkpoint", "runs/sft", "--max-batch-size", "8"])
    assert (args.host, args.port, args.max_batch_size, args.max_waiting) == ("127.0.0.1", 8000, 8, 64)
    assert callable(args.func)
