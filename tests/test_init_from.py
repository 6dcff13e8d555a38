"""`init_from`: continued pretraining and SFT from a local HF GPT-2 folder or an lmforge checkpoint, with
the model's own tokenizer end to end; a vocabulary that differs from the token shards' fails before work."""

import json
from pathlib import Path

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from flows.pretrain import check_init, train_configs  # noqa: E402
from flows.tokenizer import adopt_task  # noqa: E402
from lmdata.errors import ConfigError  # noqa: E402
from lmtrain.align.sft import SFTConfig, train_sft  # noqa: E402
from lmtrain.config import ConfigError as TrainConfigError  # noqa: E402
from lmtrain.data.shards import TokenShards, write_token_shard  # noqa: E402
from lmtrain.models.bundle import attach_tokenizer, load_bundle  # noqa: E402
from lmtrain.models.checkpoint import load_model  # noqa: E402
from lmtrain.models.hf import import_hf  # noqa: E402
from lmtrain.models.init import NO_INIT, is_none, load_init  # noqa: E402
from lmtrain.pretrain.train import TrainConfig, train  # noqa: E402
from lmtrain.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from lmtrain.tokenizer.adopt import model_tokenizer  # noqa: E402
from lmtrain.tokenizer.chat import DEFAULT_SPECIALS, EOT  # noqa: E402
from lmtrain.tokenizer.gpt2 import gpt2_tokenizer  # noqa: E402
from tests.test_hf_interop import write_tiny_bpe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [f"the {w} there, {n} others{'!' * (n % 3)}\nthe other one {w}ll rather go" for n in range(40)
         for w in ("fall", "tell", "herald", "Ther", "héllo")]
GPT2_VOCAB = 263  # write_tiny_bpe: 256 bytes + 6 merges + <|endoftext|>


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny random transformers GPT2LMHeadModel saved with a GPT-2 vocab.json + merges.txt."""
    folder = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=GPT2_VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)
    write_tiny_bpe(folder)
    return folder


def tokens(root: Path, tok) -> tuple[Path, Path]:
    """Token shards of TEXTS encoded with `tok`, as pretokenize writes them."""
    write_token_shard(TEXTS[:160], tok, root / "train" / "part0.bin")
    write_token_shard(TEXTS[160:], tok, root / "eval" / "part0.bin")
    return root / "train", root / "eval"


def config(**kw) -> TrainConfig:
    base = dict(model="gpt", block_size=16, batch_size=4, max_steps=3, warmup_steps=1, log_interval=1,
                eval_interval=3, eval_batches=1, eval_batch_size=4, mc_items=0, progress=False, device="cpu",
                resume=False)
    return TrainConfig(**{**base, **kw})


def test_gpt2_tokenizer_encodes_like_transformers_and_gains_the_chat_markers(hf_dir):
    ours = model_tokenizer(hf_dir)
    theirs = transformers.GPT2Tokenizer(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt"))
    for text in ["the other there, héllo  wörld 123! ... they'll\n\nthe", *TEXTS[:5]]:
        assert ours.encode(text) == theirs.encode(text)
        assert ours.decode(ours.encode(text)) == text
    assert ours.special_tokens[EOT] == GPT2_VOCAB - 1  # GPT-2's ids are kept ...
    assert ours.vocab_size == GPT2_VOCAB + len(DEFAULT_SPECIALS) - 1  # ... the chat markers come after them
    assert gpt2_tokenizer(hf_dir).vocab_size == GPT2_VOCAB


def test_continued_pretraining_from_a_hf_folder_changes_the_weights_and_keeps_its_tokenizer(hf_dir, tmp_path):
    adopted = adopt_task.fn(str(hf_dir), tmp_path / "tokenizer")  # the tokenizer stage, given tokenizer.init_from
    tok = load_tokenizer(tmp_path / "tokenizer")
    assert adopted["hash"] == tok.hash and tok.encode(TEXTS[0]) == gpt2_tokenizer(hf_dir).encode(TEXTS[0])
    train_dir, eval_dir = tokens(tmp_path / "tokens", tok)
    metrics = train(config(init_from=str(hf_dir)), train_dir, eval_dir, tmp_path / "out")
    start, _ = import_hf(hf_dir)
    after = load_model(tmp_path / "out" / "checkpoint")
    assert after.config.vocab_size == tok.vocab_size == TokenShards(train_dir).vocab_size
    assert (after.config.n_layer, after.config.n_embd, after.config.block_size) == (2, 16, 32)  # its own config
    w0, w1 = start.state_dict(), after.state_dict()
    assert not torch.equal(w0["transformer.h.0.attn.c_attn.weight"], w1["transformer.h.0.attn.c_attn.weight"])
    assert metrics["init_from"] == str(hf_dir) and metrics["eval_bpb"] > 0


def test_new_chat_markers_start_at_the_mean_embedding(hf_dir):
    start, _ = import_hf(hf_dir)
    model, tok = load_init(hf_dir, "gpt")
    rows = model.transformer.wte.weight.detach()
    assert torch.equal(rows[:GPT2_VOCAB], start.transformer.wte.weight.detach())
    assert torch.allclose(rows[GPT2_VOCAB:], start.transformer.wte.weight.detach().mean(0).expand(4, -1))
    x = torch.tensor([tok.encode(TEXTS[0])[:32]])
    with torch.no_grad():  # the old vocabulary's logits are unchanged
        torch.testing.assert_close(model.eval()(x)[0][..., :GPT2_VOCAB], start(x)[0])


def test_continued_pretraining_from_an_lmforge_checkpoint(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=300)
    train_dir, eval_dir = tokens(tmp_path / "tokens", tok)
    train(config(config="smoke"), train_dir, eval_dir, tmp_path / "base")
    attach_tokenizer(tmp_path / "base" / "checkpoint", tok.save(tmp_path / "tok"))
    train(config(init_from=str(tmp_path / "base" / "checkpoint"), learning_rate=1e-2), train_dir, eval_dir,
          tmp_path / "more")
    base, more = load_model(tmp_path / "base" / "checkpoint"), load_model(tmp_path / "more" / "checkpoint")
    assert base.config == more.config
    assert not torch.equal(base.lm_head.weight, more.lm_head.weight)


def test_a_vocabulary_mismatch_fails_before_any_work(hf_dir, tmp_path):
    other = train_bpe(TEXTS, vocab_size=300)  # the shards were encoded with a tokenizer trained here
    train_dir, eval_dir = tokens(tmp_path / "tokens", other)
    with pytest.raises(TrainConfigError, match=r"vocabulary of 267 .* have 300 .*tokenizer\.init_from"):
        train(config(init_from=str(hf_dir)), train_dir, eval_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    params = {"pretrain": {"models": ["gpt"], "gpt": {"init_from": str(hf_dir)}}}
    with pytest.raises(ConfigError, match="vocabulary of 267"):  # the stage checks every model first
        check_init(train_configs(params), train_dir)
    with pytest.raises(ConfigError, match="pretrain.gpt.init_from"):  # DVC tracks only the GPT's
        train_configs({"pretrain": {"common": {"init_from": str(hf_dir)}}})


def test_sft_from_an_imported_checkpoint_follows_the_mixture_and_reports_loss_per_source(hf_dir, tmp_path):
    for split in ("train", "eval"):
        rows = [{"id": f"{split}{i}", "split": split, "source": src, "prompt": f"the {w} {split} {i}?",
                 "response": f"the other {w}ll go", "messages": None, "repeats": n}  # balance: pydoc weighs 2x
                for i, (src, w, n) in enumerate([("shakespeare", "fall", 1), ("pydoc", "tell", 2)] * 4)]
        (tmp_path / split).mkdir()
        (tmp_path / split / "part0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = SFTConfig(epochs=1, batch_size=4, samples=1, sample_max_new_tokens=4, progress=False, device="cpu",
                    init_from=str(hf_dir), eval_split="all")  # every held-out row, not only the dev side
    m = train_sft(cfg, cfg.init_from, tmp_path / "train", tmp_path / "eval", tmp_path / "sft")
    model, tok = load_bundle(tmp_path / "sft" / "checkpoint")
    assert tok.hash == model_tokenizer(hf_dir).hash and model.config.vocab_size == tok.vocab_size
    assert set(m["eval_loss_by_source"]) == set(m["eval_loss_before_by_source"]) == {"shakespeare", "pydoc"}
    assert m["eval_conversations_by_source"] == {"pydoc": 4, "shakespeare": 4}
    assert m["train_conversations"] == 4 * 1 + 4 * 2  # each conversation `repeats` times: the mixture
    assert m["eval_loss"] < m["eval_loss_before"]


def test_the_default_placeholder_means_from_scratch():
    assert is_none(ROOT / NO_INIT) and is_none(None) and not is_none(ROOT / "flows")
    with pytest.raises(TrainConfigError, match="neither model.json"):
        load_init(ROOT / "flows")


def test_every_profile_parses_as_dvc_exp_run_overrides():
    """`lmforge run --profile` passes each leaf as `dvc exp run -S key=value`, which Hydra's grammar parses:
    JSON's quoted keys failed there for the list of sources in profiles/continue_pretraining.yaml."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from flows.cli import profile_overrides

    parser = OverridesParser.create()
    for profile in sorted((ROOT / "profiles").glob("*.yaml")):
        expected = yaml.safe_load(profile.read_text())
        for override in parser.parse_overrides(profile_overrides(str(profile))):
            node = expected
            for key in override.key_or_group.split("."):
                node = node[key]
            assert override.value() == node, (profile.name, override.key_or_group)


TOPICS = {k: f"the {k} there, rather other ones tell {k}" for k in
          ("loops", "functions", "classes", "imports", "lists", "strings", "dicts", "tuples", "sets", "files",
           "errors", "numbers")}


@pytest.fixture(scope="module")
def hf_chain(tmp_path_factory) -> dict:
    """The alignment chain on a tiny random HF GPT-2 folder (block 64), as profiles/sft_from_hf.yaml runs it:
    SFT and the judge from the folder, the reward model from SFT, PPO and RLOO from SFT against it."""
    import polars as pl

    from lmtrain.align.ppo import PPOConfig, train_ppo
    from lmtrain.align.reward import JudgeConfig, RewardConfig, train_judge, train_reward
    from lmtrain.align.rloo import RLOOConfig, train_rloo

    root = tmp_path_factory.mktemp("hf_chain")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=GPT2_VOCAB, n_positions=64, n_embd=16, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(root / "gpt2", safe_serialization=True)
    write_tiny_bpe(root / "gpt2")
    names = sorted(TOPICS)
    ins, cmp = [], []
    for i, k in enumerate(names):
        split, prompt, other = "eval" if i >= 8 else "train", f"Explain {k}.", names[(i + 5) % len(names)]
        ins.append({"id": f"i{i:02d}", "split": split, "source": "pydoc", "group": k, "prompt": prompt,
                    "response": TOPICS[k], "messages": None})
        cmp.append({"id": f"c{i:02d}", "split": split, "source": "pydoc", "group": k, "prompt": prompt,
                    "chosen": TOPICS[k], "rejected": TOPICS[other]})
    for name, rows in (("ins", ins), ("cmp", cmp)):
        (root / name).mkdir()
        pl.DataFrame(rows).write_parquet(root / name / "part-0.parquet")
    fast = dict(device="cpu", progress=False)
    out = {"root": root}
    out["sft"] = train_sft(SFTConfig(epochs=1, batch_size=4, samples=0, eval_split="all", init_from=str(root / "gpt2"),
                                     **fast), root / "gpt2", root / "ins", root / "ins", root / "sft")
    sft = root / "sft" / "checkpoint"
    rcfg = RewardConfig(epochs=1, batch_size=4, eval_split="all", max_response_tokens=16, **fast)
    out["rm"] = train_reward(rcfg, sft, root / "cmp", root / "cmp", root / "rm", root / "ins")
    jcfg = JudgeConfig(epochs=1, batch_size=4, eval_split="all", max_response_tokens=16, init_from=str(root / "gpt2"),
                       **fast)
    out["judge"] = train_judge(jcfg, jcfg.init_from, root / "cmp", root / "cmp", root / "judge", rcfg.subset, root / "ins")
    rl = dict(steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4, minibatch_size=4, **fast)
    out["ppo"] = train_ppo(PPOConfig(**rl), sft, root / "rm" / "checkpoint", root / "ins", root / "ppo")
    out["rloo"] = train_rloo(RLOOConfig(**rl), sft, root / "rm" / "checkpoint", root / "ins", root / "rloo")
    return out


def test_the_judge_and_reward_model_start_from_a_hf_folder_and_keep_its_tokenizer(hf_chain):
    from lmtrain.align.reward_model import load_reward_model

    root = hf_chain["root"]
    adopted = model_tokenizer(root / "gpt2")  # GPT-2's ids + the chat markers
    for name in ("sft/checkpoint", "rm/checkpoint", "judge/checkpoint", "ppo/checkpoint", "rloo/checkpoint"):
        assert load_tokenizer(root / name / "tokenizer").hash == adopted.hash, name
    judge, tok = load_reward_model(root / "judge" / "checkpoint")
    start, _ = import_hf(root / "gpt2")  # the judge's backbone grew the chat markers' rows, then trained
    assert judge.backbone.config.vocab_size == tok.vocab_size == GPT2_VOCAB + len(DEFAULT_SPECIALS) - 1
    assert judge.backbone.config.block_size == 64
    assert hf_chain["judge"]["init"] == str(root / "gpt2") and hf_chain["rm"]["init"].endswith("sft/checkpoint")
    assert hf_chain["judge"]["pairs"] > 0 and 0.0 <= hf_chain["judge"]["accuracy"] <= 1.0


def test_align_eval_and_the_curve_grade_hf_policies_with_the_hf_judge(hf_chain, tmp_path):
    from lmtrain.align.curve import AlignCurveConfig, over_optimisation_curve
    from lmtrain.align.evaluate import AlignEvalConfig, evaluate_alignment

    root = hf_chain["root"]
    policies = {name: root / name / "checkpoint" for name in ("ppo", "rloo")}
    m = evaluate_alignment(AlignEvalConfig(policies=list(policies), samples_per_prompt=1, max_new_tokens=4, split="dev",
                                           bootstrap_resamples=50, device="cpu"),
                           root / "sft" / "checkpoint", policies, root / "judge" / "checkpoint", root / "ins")
    assert m["prompts"] == 3 and all(0.0 <= m[p]["win_rate"] <= 1.0 for p in policies)
    curve = over_optimisation_curve(AlignCurveConfig(prompts=2, max_new_tokens=4, device="cpu"),
                                    root / "sft" / "checkpoint", {p: root / p for p in policies},
                                    root / "rm" / "checkpoint", root / "judge" / "checkpoint", root / "ins")
    assert {p["method"] for p in curve["points"]} == set(policies)


def test_a_judge_from_another_tokenizer_fails_before_work(hf_chain, tmp_path):
    """The defect: the judge started from models/pretrain/gpt (the pipeline's BPE) while SFT started from
    a GPT-2 folder, so align_eval refused the judge at the end of the DAG."""
    from lmtrain.align.reward import check_same_tokenizer

    root = hf_chain["root"]
    check_same_tokenizer(root / "gpt2", root / "rm" / "checkpoint")  # the profile's setting: no error
    other = train_bpe(TEXTS, vocab_size=300)
    train(config(config="smoke"), *tokens(tmp_path / "tokens", other), tmp_path / "base")
    attach_tokenizer(tmp_path / "base" / "checkpoint", other.save(tmp_path / "tok"))
    with pytest.raises(TrainConfigError, match=r"judge\.init_from: .* tokenizer of 300 tokens .* has 267"):
        check_same_tokenizer(tmp_path / "base" / "checkpoint", root / "rm" / "checkpoint")


def test_the_evaluation_suite_scores_a_hf_folder_with_its_own_vocabulary(hf_dir):
    from lmtrain.evaluate.suite import EvaluateConfig, check_config
    from lmtrain.models.init import load_pretrained

    model, tok = load_pretrained(hf_dir)
    start, _ = import_hf(hf_dir)
    assert tok.vocab_size == GPT2_VOCAB == model.config.vocab_size  # no chat markers: scored as it is
    x = torch.tensor([tok.encode(TEXTS[1])[:32]])
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], start(x)[0])
    check_config(EvaluateConfig(models=[{"name": "gpt2", "path": str(hf_dir)}]))
    (hf_dir.parent / "no_weights").mkdir(exist_ok=True)
    (hf_dir.parent / "no_weights" / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(TrainConfigError, match="no model.safetensors"):
        check_config(EvaluateConfig(models=[{"name": "x", "path": str(hf_dir.parent / "no_weights")}]))


def test_the_sft_from_hf_profile_resolves_into_a_dag_that_never_reads_the_pipelines_gpt(tmp_path):
    """profiles/sft_from_hf.yaml applied as `dvc exp run -S` would: every stage downstream of SFT, the judge
    and the evaluation suite follow the GPT-2 folder; the smoke run copies it into its scratch folder."""
    import subprocess
    import sys

    import networkx as nx
    from dvc.repo import Repo

    from flows._smoke import input_paths, smoke_params

    profile = yaml.safe_load((ROOT / "profiles" / "sft_from_hf.yaml").read_text())
    params = smoke_params(yaml.safe_load((ROOT / "params.yaml").read_text()), profile, bf16_ok=False)
    assert input_paths(params) == ["data/init/gpt2", "init/none"]  # what --smoke copies beside the code
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    repo = Repo(str(tmp_path))
    deps = {st.name: {str(Path(d.def_path)) for d in st.deps} for st in repo.index.stages}
    for stage in ("sft", "judge"):
        assert "data/init/gpt2" in deps[stage] and not any(d.startswith("models/pretrain") for d in deps[stage])
    assert "models/sft/checkpoint" in deps["reward"]
    align_eval = next(st for st in repo.index.stages if st.name == "align_eval")
    upstream = {st.name for st in nx.descendants(repo.index.graph, align_eval)}  # edges: stage -> its deps
    assert {"sft", "reward", "judge", "ppo", "rloo", "dpo"} <= upstream and "pretrain" not in upstream
    assert "evaluate-models@3" in deps and "data/init/gpt2" in deps["evaluate-models@3"]


def test_the_smoke_copy_brings_the_init_folder_and_names_a_missing_one(hf_dir, tmp_path):
    from flows._errors import UsageError
    from flows._smoke import prepare_scratch

    work, raw = tmp_path / "work", tmp_path / "raw"
    for name in ("params.yaml", "dvc.yaml"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text((ROOT / name).read_text())
    for name in ("lmdata", "lmtrain", "flows", "init"):
        (work / name).symlink_to(ROOT / name)  # copytree follows the links: the scratch gets real copies
    (raw / "text").mkdir(parents=True)
    (raw / "text" / "a.txt").write_text("x\n")
    profile = ROOT / "profiles" / "sft_from_hf.yaml"
    with pytest.raises(UsageError, match=r"data/init/gpt2: named in the params .* put the model or file there"):
        prepare_scratch(work, profile, raw, tmp_path / "scratch1", 1.0, False)
    (work / "data" / "init").mkdir(parents=True)
    (work / "data" / "init" / "gpt2").symlink_to(hf_dir, target_is_directory=True)
    (tmp_path / "scratch2").mkdir()
    prepare_scratch(work, profile, raw, tmp_path / "scratch2", 1.0, False)
    copied = tmp_path / "scratch2" / "data" / "init" / "gpt2"
    assert not copied.is_symlink() and (copied / "model.safetensors").read_bytes() == (hf_dir / "model.safetensors").read_bytes()
