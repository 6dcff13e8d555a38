"""An OpenAI-compatible HTTP server over lmtrain.inference.engine: /v1/completions, /v1/chat/completions (streamed as
server-sent events or not), /v1/models and /health.

    lmforge serve --checkpoint runs/sft        # or: python -m lmtrain.inference.serve --checkpoint runs/sft

Binds 127.0.0.1 unless told otherwise. With an API key (`--api-key`, or LMFORGE_API_KEY, as vLLM's
`--api-key`) every route but /health needs `Authorization: Bearer KEY`. Errors use OpenAI's body,
{"error": {"message", "type", "param", "code"}}, for every status: 400 for a malformed request (bad
JSON, bad field, a prompt or max_tokens beyond the context), 401 without the key, 404 for an unknown
model or path, 405 for a wrong method, 429 beyond the concurrency cap, 503 when the engine is down.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmtrain.inference.engine import Engine, EngineFull, Event, SamplingParams
from lmtrain.inference.engine import Request as EngineRequest
from lmtrain.inference.protocol import APIError, ChatRequest, CompletionRequest, SamplingFields, message_text
from lmtrain.models.bundle import load_bundle
from lmtrain.tokenizer.chat import END_OF_TURN, EOT, render

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
API_KEY_ENV = "LMFORGE_API_KEY"
OPEN_PATHS = frozenset({"/health"})  # answered without the API key (load balancers, `make` checks)


# ---- the app ----

class Server:
    """The engine plus what the handlers need: model name, tokenizer, context size."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.created = int(time.time())
        self.specials = set(self.tokenizer.special_tokens.values())

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def completion_prompt(self, req: CompletionRequest) -> list[int]:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "prompt: a list of several prompts is not supported; send one per request",
                               param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        bad = [t for t in prompt if not 0 <= t < self.tokenizer.vocab_size]
        if bad:
            raise APIError(400, f"prompt: token ids {bad[:5]} outside 0..{self.tokenizer.vocab_size - 1}",
                           param="prompt")
        return list(prompt)

    def params(self, req: SamplingFields, prompt_ids: list[int], max_tokens: int | None, default_max: int | None,
               stop_ids: set[int]) -> SamplingParams:
        """Sampling settings, with the context checks that give the client a clear 400."""
        ctx = self.engine.block_size
        if not prompt_ids:
            raise APIError(400, "prompt is empty: give at least one token", param="prompt")
        if len(prompt_ids) >= ctx:
            raise APIError(400, f"prompt is {len(prompt_ids)} tokens; this model's context is {ctx} tokens "
                                f"(prompt + completion)", param="prompt", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = default_max if default_max is not None else ctx - len(prompt_ids)
            max_tokens = min(max_tokens, ctx - len(prompt_ids))
        if len(prompt_ids) + max_tokens > ctx:
            raise APIError(400, f"max_tokens {max_tokens} + prompt {len(prompt_ids)} tokens exceeds this model's "
                                f"context of {ctx} tokens", param="max_tokens", code="context_length_exceeded")
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature,
                              top_p=req.top_p if req.top_p < 1 else None, top_k=req.top_k,
                              stop=req.stop_list(), stop_token_ids=frozenset(stop_ids), seed=req.seed)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> tuple[EngineRequest, asyncio.Queue]:
        """Queue the request on the engine; its events arrive on an asyncio queue of this event loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        holder: list = []

        def on_event(event: Event) -> None:  # runs on the engine thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # event loop closed: nobody is listening any more
                if holder:
                    holder[0].cancel()

        try:
            handle = self.engine.submit(prompt_ids, params, on_event)
        except EngineFull as e:
            raise APIError(429, str(e), type_="rate_limit_error", code="server_busy") from e
        except RuntimeError as e:
            raise APIError(503, str(e), type_="server_error", code="engine_down") from e
        holder.append(handle)
        return handle, queue


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _collect(handle: EngineRequest, queue: asyncio.Queue) -> tuple[str, Event]:
    """All text of a request and its last event (cancels the request if the handler is cancelled)."""
    parts = []
    try:
        while True:
            event = await queue.get()
            parts.append(event.text)
            if event.finish_reason is not None:
                if event.error:
                    raise APIError(503, event.error, type_="server_error", code="engine_down")
                return "".join(parts), event
    finally:
        handle.cancel()


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(handle: EngineRequest, queue: asyncio.Queue, chunk: Callable, n_prompt: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: one chunk per text piece, a last one with finish_reason, then [DONE].

    When the client goes away, Starlette cancels this generator; `finally` frees the engine slot.
    """
    try:
        if (opening := chunk(None, None, first=True)) is not None:
            yield _sse(opening)
        while True:
            event = await queue.get()
            text = event.text
            # when the client reads slower than the engine decodes, send what has piled up as one chunk
            while event.finish_reason is None and not queue.empty():
                event = queue.get_nowait()
                text += event.text
            if event.error:
                yield _sse({"error": {"message": event.error, "type": "server_error", "param": None,
                                      "code": "engine_down"}})
                break
            if text and event.finish_reason is None:
                yield _sse(chunk(text, None))
            if event.finish_reason is not None:
                yield _sse(chunk(text, event.finish_reason))
                if include_usage:
                    yield _sse(chunk(None, None, usage=_usage(n_prompt, event.completion_tokens)))
                break
        yield _sse("[DONE]")
    finally:
        handle.cancel()


def create_app(engine: Engine, model_name: str, api_key: str | None = None) -> FastAPI:
    """The FastAPI app around a running engine (shut down with the app); with `api_key`, every route
    but /health answers 401 unless the request carries `Authorization: Bearer <api_key>`."""
    server = Server(engine, model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.shutdown()

    app = FastAPI(title="lmforge", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"unknown path {request.url.path}; this server answers /v1/completions, " \
                      "/v1/chat/completions, /v1/models and /health"
            return APIError(404, message, code="not_found").response()
        if exc.status_code == 405:
            return APIError(405, f"method {request.method} is not allowed on {request.url.path}",
                            code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def _require_key(request: Request, call_next):
            given = request.headers.get("authorization", "").encode()
            if request.url.path not in OPEN_PATHS and not hmac.compare_digest(given, expected):
                return APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>' "
                                     "(the key given to lmforge serve --api-key)",
                                code="invalid_api_key").response()
            return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            msg = "; ".join(f"invalid JSON body: {e.get('ctx', {}).get('error', e['msg'])}" for e in errors)
            return APIError(400, msg).response()
        parts = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors]
        param = ".".join(str(p) for p in errors[0]["loc"][1:]) if errors else None
        return APIError(400, "; ".join(parts), param=param).response()

    @app.get("/health")
    async def health() -> JSONResponse:
        load = engine.load()
        return JSONResponse({"status": "ok" if load["healthy"] else "down", **load},
                            status_code=200 if load["healthy"] else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": server.created,
                                            "owned_by": "lmforge", "max_model_len": engine.block_size}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        server.check_model(req.model)
        prompt_ids = server.completion_prompt(req)
        params = server.params(req, prompt_ids, req.max_tokens, 16, {server.tokenizer.eot_id})
        handle, queue = server.submit(prompt_ids, params)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text, finish, first=False, usage=None) -> dict | None:
            if first:  # completions have no opening chunk (chat's announces the role)
                return None
            choices = [] if usage else [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
            return {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                    "choices": choices, **({"usage": usage} if usage else {})}

        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(handle, queue, chunk, len(prompt_ids), include_usage),
                                     media_type="text/event-stream")
        text, last = await _collect(handle, queue)
        return {**chunk(text, last.finish_reason), "usage": _usage(len(prompt_ids), last.completion_tokens)}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        server.check_model(req.model)
        messages = [message_text(i, m) for i, m in enumerate(req.messages)]
        try:
            prompt_ids, _ = render(messages, server.tokenizer, add_generation_prompt=True)
        except ValueError as e:
            raise APIError(400, f"messages: {e}", param="messages") from e
        # the reply ends at end-of-turn; any other special token (a role marker, EOT) ends it too
        stop_ids = set(server.specials)
        params = server.params(req, prompt_ids, req.max_completion_tokens or req.max_tokens, None, stop_ids)
        handle, queue = server.submit(prompt_ids, params)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text, finish, first=False, usage=None) -> dict:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choices = [] if usage else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": choices, **({"usage": usage} if usage else {})}

        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(handle, queue, chunk, len(prompt_ids), include_usage),
                                     media_type="text/event-stream")
        text, last = await _collect(handle, queue)
        return {"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": last.finish_reason}],
                "usage": _usage(len(prompt_ids), last.completion_tokens)}

    return app


def build_app(ckpt_dir: str | Path, model_name: str | None = None, max_batch_size: int = 16,
              max_waiting: int = 64, device: str = "cpu", api_key: str | None = None) -> FastAPI:
    """Load a checkpoint folder with its tokenizer (lmtrain.models.bundle) and return the app serving it."""
    model, tokenizer = load_bundle(ckpt_dir, device)
    missing = [s for s in (EOT, END_OF_TURN) if s not in tokenizer.special_tokens]
    if missing:
        raise ValueError(f"{ckpt_dir}/tokenizer: lacks special tokens {missing} (needed for stops and chat)")
    engine = Engine(model, tokenizer, max_batch_size=max_batch_size, max_waiting=max_waiting)
    return create_app(engine, model_name or default_model_name(ckpt_dir), api_key=api_key)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_model_name(ckpt_dir: str | Path) -> str:
    """The folder's name, or its parent's for the pipeline's `<model>/checkpoint` folders ('gpt', 'sft')."""
    path = Path(ckpt_dir).resolve()
    return path.parent.name if path.name == "checkpoint" and path.parent.name else path.name


def run(ckpt_dir: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, model_name: str | None = None,
        max_batch_size: int = 16, max_waiting: int = 64, device: str = "cpu", log_level: str = "info",
        threads: int | None = None, api_key: str | None = None) -> None:
    """Serve a checkpoint until interrupted (uvicorn, one process, one engine thread)."""
    import torch
    import uvicorn

    if threads:
        torch.set_num_threads(threads)
    if not api_key and not is_loopback(host):
        print(f"lmforge serve: WARNING: binding {host} without an API key: anyone who can reach this "
              f"address can use the model. Set --api-key or {API_KEY_ENV}.", file=sys.stderr, flush=True)

    app = build_app(ckpt_dir, model_name, max_batch_size, max_waiting, device, api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def add_serve_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `serve` to a CLI's subcommands (lmforge serve ...); its func runs the server."""
    p = subparsers.add_parser("serve", help="serve a checkpoint behind an OpenAI-compatible HTTP API")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder carrying its tokenizer/ (lmtrain.models.bundle)")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--model-name", default=None, help="the model id clients use (default: the folder's name; "
                   "for a `<name>/checkpoint` folder, <name>)")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests decoded together per step")
    p.add_argument("--max-waiting", type=int, default=64, help="requests queued beyond the batch; more get 429")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest for tiny models)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                   help=f"require 'Authorization: Bearer KEY' on every route but /health (default: ${API_KEY_ENV})")
    p.set_defaults(func=_cmd_serve)
    return p


def _cmd_serve(args: argparse.Namespace) -> int:
    run(args.checkpoint, args.host, args.port, args.model_name, args.max_batch_size, args.max_waiting,
        args.device, args.log_level, args.threads, api_key=args.api_key)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m lmtrain.inference.serve --checkpoint DIR [...]` without the lmforge CLI."""
    parser = argparse.ArgumentParser(prog="python -m lmtrain.inference.serve")
    add_serve_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
