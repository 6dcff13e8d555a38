"""Inference: one sampler (sampling.py), one incremental UTF-8 decoder (decode.py), generation
(generate.py), the batched engine (engine.py), the HTTP server (serve.py) and terminal chat (chat.py)."""
