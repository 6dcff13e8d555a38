"""Models: GPT-2 (with its KV cache), the bigram and MLP baselines, the registry, checkpoints, bundles,
HuggingFace interop and FLOPs per token."""
