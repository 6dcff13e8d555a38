"""lmtrain: the training side of lmforge, pure torch, one layer per package.

    tokenizer/   byte-level BPE and character tokenizers, the chat template
    data/        token shards on disk (one format, one reader/writer), training windows, Parquet tables
    models/      GPT-2, the bigram and MLP baselines, the registry, checkpoints, bundles, HF interop, FLOPs
    runtime.py   device, dtype/autocast, DDP, seeding, threads, LR schedule, optimizer step, collectives
    config.py    the base config every training method extends; params.yaml sections type-checked
    pretrain/    the pretraining loop, evaluation (bits per byte, multiple choice), loss curves
    inference/   one sampler, one UTF-8 decoder, generation, the batched engine, serving, chat
    align/       SFT, reward, DPO, PPO, evaluation; shared pieces in common.py, pairs.py, reward_model.py

A layer imports only the layers listed above it; no alignment method imports another method.
"""
