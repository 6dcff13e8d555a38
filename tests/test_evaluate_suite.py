"""The evaluation suite (lmtrain.evaluate): every task format read and scored on crafted files whose
right answers are known, the CORE-style aggregate on a hand-computed case, the tasks derived from an
evaluation set, bits per byte on shards or re-encoded text, and config errors before any work."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lmtrain.config import ConfigError
from lmtrain.data.shards import write_token_shard
from lmtrain.evaluate.derived import DerivedConfig, continuation_items, eval_documents, last_word_items
from lmtrain.evaluate.scoring import Continuation, score_rows, score_task
from lmtrain.evaluate.suite import (
    EvaluateConfig,
    centred,
    check_config,
    core_score,
    evaluate_model,
    load_tasks,
)
from lmtrain.evaluate.tasks import FORMATS, TaskSpec, read_task, task_spec
from lmtrain.models.checkpoint import save_checkpoint
from lmtrain.models.registry import build_model
from lmtrain.runtime import setup
from lmtrain.tokenizer import train_char

ROOT = Path(__file__).resolve().parent.parent

# Right answers use only the letters a-m (and spaces); wrong ones only n-z, at least as long, so a
# bigram model that has seen only the right answers prefers them by sum and per byte alike.
CRAFTED = {
    "hellaswag": [{"ctx": "A man sits. He", "endings": ["runs to town", "made a cake", "sorts worms"], "label": 1},
                  {"ctx": "She opens it and", "endings": ["typo nuts yo", "root tours", "feeds a hike"], "label": 2}],
    "arc": [{"question": "What is hot?", "choices": {"text": ["lime deck", "snow storm", "wry tutor"],
                                                     "label": ["A", "B", "C"]}, "answerKey": "A"},
            {"question": {"stem": "What grows?", "choices": [{"text": "pony town", "label": "1"},
                                                              {"text": "a big elm", "label": "2"}]},
             "answerKey": "2"}],
    "openbookqa": [{"question_stem": "Sun is", "choices": {"text": ["rosy worst", "hidden", "sour"],
                                                            "label": ["A", "B", "C"]}, "answerKey": "B"}],
    "piqa": [{"goal": "Boil water", "sol1": "trust your snout", "sol2": "heat a kettle", "label": 1},
             {"goal": "Dry a cat", "sol1": "face a blade", "sol2": "pour rusty wort", "label": 0}],
    "generic": [{"context": "The end", "choices": ["sunny trout", "made me glad", "worn"], "label": 1},
                {"context": "Then", "choices": ["run snow", "tow", "jade", "but not you"], "label": 2}],
}
RIGHT = {"hellaswag": [" made a cake", " feeds a hike"], "arc": [" lime deck", " a big elm"],
         "openbookqa": [" hidden"], "piqa": [" heat a kettle", " face a blade"], "generic": [" made me glad", " jade"]}
LAMBADA = [{"text": "The pet that purrs is my cat"}, {"text": "On the mat sat the cat"},
           {"text": "It barks, so it is my dog"}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def alphabet() -> str:
    return "".join(chr(c) for c in range(32, 127)) + "\n"


def bigram_knowing(texts: list[str], tok) -> torch.nn.Module:
    """A bigram model hand-set to the log-frequencies of the character pairs in `texts` (add-0.01)."""
    model = build_model("bigram", {"block_size": 64}, vocab_size=tok.vocab_size)
    counts = torch.full((tok.vocab_size, tok.vocab_size), 0.01)
    for text in texts:
        ids = tok.encode(text)
        for a, b in zip(ids, ids[1:]):
            counts[a, b] += 1
    with torch.no_grad():
        model.token_logits.weight.copy_((counts / counts.sum(1, keepdim=True)).log())
    return model.eval()


@pytest.mark.parametrize("fmt", ["hellaswag", "arc", "openbookqa", "piqa", "generic"])
def test_each_multiple_choice_format_scores_one_for_a_model_that_knows_the_answers(tmp_path, fmt):
    tok = train_char([alphabet()])
    items = read_task(TaskSpec(fmt, fmt, str(write_jsonl(tmp_path / "t.jsonl", CRAFTED[fmt]))))
    assert [item["choices"][item["label"]] for item in items] == RIGHT[fmt]
    knows = bigram_knowing([item["context"][-1] + item["choices"][item["label"]] for item in items], tok)
    assert score_task(knows, tok, items, "multiple_choice") == {
        "acc": 1.0, "acc_norm": 1.0, "n": len(items), "acc_stderr": 0.0,
        "chance": pytest.approx(sum(1 / len(i["choices"]) for i in items) / len(items))}
    decoy = [item["context"][-1] + item["choices"][(item["label"] + 1) % len(item["choices"])] for item in items]
    wrong = score_task(bigram_knowing(decoy, tok), tok, items, "multiple_choice")  # knows another answer
    assert wrong["acc"] == wrong["acc_norm"] == 0.0


def test_prompts_follow_lm_eval_harness_templates(tmp_path):
    arc = read_task(TaskSpec("a", "arc", str(write_jsonl(tmp_path / "a.jsonl", CRAFTED["arc"][:1]))))
    assert arc[0]["context"] == "Question: What is hot?\nAnswer:" and arc[0]["choices"][0] == " lime deck"
    piqa = read_task(TaskSpec("p", "piqa", str(write_jsonl(tmp_path / "p.jsonl", CRAFTED["piqa"][:1]))))
    assert piqa[0]["context"] == "Question: Boil water\nAnswer:"
    hs = [{"ctx": "How to cook [title] Boil it.", "endings": ["[step] Then eat", "b"], "label": "0"}]
    item = read_task(TaskSpec("h", "hellaswag", str(write_jsonl(tmp_path / "h.jsonl", hs))))[0]
    assert item == {"context": "How to cook. Boil it.", "choices": [" Then eat", " b"], "label": 0}
    generic = read_task(TaskSpec("g", "generic", str(write_jsonl(tmp_path / "g.jsonl", CRAFTED["generic"])), "\n"))
    assert generic[0]["choices"][1] == "\nmade me glad"
    assert len(read_task(TaskSpec("g", "generic", str(tmp_path / "g.jsonl")), max_items=1)) == 1


def test_lambada_counts_a_word_only_when_greedy_decoding_reproduces_it(tmp_path):
    tok = train_char([alphabet()])
    items = read_task(TaskSpec("l", "lambada", str(write_jsonl(tmp_path / "l.jsonl", LAMBADA))))
    assert [i["target"] for i in items] == [" cat", " cat", " dog"]
    knows_cat = bigram_knowing(["y cat", "e cat"], tok)  # after 'y' or 'e' the argmaxes spell " cat", never " dog"
    got = score_task(knows_cat, tok, items, "last_word")
    assert {k: v for k, v in got.items() if k != "target_bpb"} == {
        "acc": pytest.approx(2 / 3), "acc_norm": None, "n": 3, "chance": 0.0, "acc_stderr": pytest.approx(1 / 3)}
    uniform = build_model("bigram", {"block_size": 64}, vocab_size=tok.vocab_size)  # log2(V) bits per 1-byte token
    assert score_task(uniform, tok, items, "last_word")["target_bpb"] == pytest.approx(math.log2(tok.vocab_size))
    assert got["target_bpb"] < math.log2(tok.vocab_size)


def test_rows_are_scored_as_one_pass_would_score_them():
    tok = train_char([alphabet()])
    model = build_model("gpt", {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8, "dropout": 0.0},
                        vocab_size=tok.vocab_size).eval()
    rows = [Continuation(tok.encode("a long context here"), tok.encode(" xy")), Continuation([], tok.encode("q")),
            Continuation(tok.encode("ctx"), tok.encode(" longer than eight"))]  # scored: its last 8 tokens
    got = score_rows(model, rows, tok.eot_id, batch_size=1)
    for row, s in zip(rows, got):  # by hand: the window's last block_size + 1 tokens (EOT for no context)
        seq = ((row.context or [tok.eot_id]) + row.continuation)[-9:]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([seq[:-1]]))[0][0], -1)
        n = min(len(row.continuation), 8)
        want = sum(float(logp[len(seq) - 1 - n + k, t]) for k, t in enumerate(row.continuation[-n:]))
        assert s.logprob == pytest.approx(want, abs=1e-5) and s.tokens == n
    assert [s.logprob for s in score_rows(model, rows, tok.eot_id, batch_size=2)] == pytest.approx(
        [s.logprob for s in got], abs=1e-5)  # padding in a shared batch changes nothing


def test_core_aggregate_on_a_hand_computed_case():
    results = {"mc4": {"acc": 0.5, "acc_norm": 0.625, "n": 8, "chance": 0.25},   # norm: (0.625-0.25)/0.75 = 0.5
               "last": {"acc": 0.3, "acc_norm": None, "n": 10, "chance": 0.0},   # 0.3
               "mc2": {"acc": 0.25, "acc_norm": 0.5, "n": 4, "chance": 0.5}}     # norm: 0; raw: -0.5
    assert centred(0.625, 0.25) == pytest.approx(0.5)
    assert core_score(results, "acc_norm") == pytest.approx((0.5 + 0.3 + 0.0) / 3)
    assert core_score(results, "acc") == pytest.approx(((0.5 - 0.25) / 0.75 + 0.3 - 0.5) / 3)


@pytest.mark.parametrize("fmt, field", [("hellaswag", "endings"), ("arc", "answerKey"), ("openbookqa", "choices"),
                                        ("piqa", "sol2"), ("generic", "label"), ("lambada", "text")])
def test_a_row_without_its_field_names_file_row_and_field(tmp_path, fmt, field):
    rows = [dict(r) for r in (LAMBADA if fmt == "lambada" else CRAFTED[fmt])]
    rows.append({k: v for k, v in rows[0].items() if k != field})
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(ConfigError, match=rf"t\.jsonl:{len(rows)}: field '{field}"):
        read_task(TaskSpec(fmt, fmt, str(path)))


def test_bad_task_entries_fail_before_any_file_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluate\.tasks\[0\]\.format: 'mmlu' is not one of"):
        task_spec({"name": "x", "format": "mmlu", "path": "x.jsonl"}, "evaluate.tasks[0]")
    with pytest.raises(ConfigError, match=r"task 'x': file not found: nowhere\.jsonl"):
        read_task(task_spec({"name": "x", "format": "piqa", "path": "nowhere.jsonl"}, "t"))
    assert set(FORMATS) == {"hellaswag", "arc", "openbookqa", "piqa", "lambada", "generic"}


def write_evalset(folder: Path, docs: list[tuple[str, str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"d{i}", "source": s, "split": split, "text": t} for i, (s, split, t) in enumerate(docs)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-00000.parquet")
    return folder


def numbered(prefix: str, n: int) -> str:
    """Words a0 a1 ..., a line break every 7 words, every 5th word `astop.` closing a sentence."""
    words = [f"{prefix}stop." if i % 5 == 4 else f"{prefix}{i}" for i in range(n)]
    return "".join(w + ("\n" if i % 7 == 6 else " ") for i, w in enumerate(words)).strip()


def test_derived_tasks_come_from_the_eval_rows_as_written(tmp_path):
    folder = write_evalset(tmp_path / "evalset", [("play", "eval", numbered("a", 300)), ("code", "eval", numbered("b", 200)),
                                                  ("play", "train", numbered("z", 300))])
    docs = eval_documents(folder)
    assert [d["id"] for d in docs] == ["d0", "d1"]  # training rows are never used
    cfg = DerivedConfig(items=12, context_words=10, continuation_words=3, choices=4)
    items = continuation_items(docs, cfg, seed=1)
    assert items == continuation_items(docs, cfg, seed=1) and len(items) == 12
    texts = "\n".join(d["text"] for d in docs)
    for item in items:
        truth = item["choices"][item["label"]]
        assert item["context"] + truth in texts and len(item["context"].split()) == 10
        assert all(len(c.split()) == 3 and c[0].isspace() for c in item["choices"])
        assert len(set(item["choices"])) == 4
        prefix = item["context"][0]  # distractors from the same source: the same first letter
        assert all(c.split()[0][0] == prefix for c in item["choices"])
    words = last_word_items(docs, cfg)
    assert len(words) == 12
    for item in words:
        assert item["target"].strip() in ("astop", "bstop") and item["context"] + item["target"] + "." in texts


def tiny_bundle(folder: Path, tok, texts: list[str]) -> Path:
    save_checkpoint(folder, bigram_knowing(texts, tok))
    tok.save(folder / "tokenizer")
    return folder


def test_suite_scores_a_bundle_and_bpb_agrees_on_shards_and_re_encoded_text(tmp_path):
    text = numbered("w", 400)
    evalset = write_evalset(tmp_path / "evalset", [("play", "eval", text)])
    tok = train_char([alphabet()])
    write_token_shard([text], tok, tmp_path / "tokens" / "eval.bin")
    ckpt = tiny_bundle(tmp_path / "ckpt", tok, [text])
    cfg = EvaluateConfig(models=[{"name": "bigram", "path": str(ckpt)}], eval_text=str(evalset), eval_tokens=str(tmp_path / "tokens"),
                         derived={"items": 10, "context_words": 8, "continuation_words": 2, "choices": 3})
    tasks = load_tasks(cfg, check_config(cfg))
    assert {n: len(t["items"]) for n, t in tasks.items()} == {"heldout_continuation": 10, "heldout_last_word": 10}
    rt = setup("cpu", "float32", 0, 1)
    on_shards = evaluate_model(ckpt, tasks, cfg, rt)
    assert on_shards["bpb_tokens"] == "shards" and set(on_shards["tasks"]) == set(tasks)
    assert on_shards["tasks"]["heldout_continuation"]["chance"] == pytest.approx(1 / 3)
    assert on_shards["core"] == pytest.approx(core_score(on_shards["tasks"]))
    re_encoded = evaluate_model(ckpt, {}, dataclasses.replace(cfg, eval_tokens=str(tmp_path / "none")), rt)
    assert re_encoded["bpb_tokens"] == "re-encoded"
    assert re_encoded["eval_bpb"] == pytest.approx(on_shards["eval_bpb"], rel=1e-6)
    assert 0 < on_shards["eval_bpb"] < math.log2(tok.vocab_size)


def test_config_errors_name_the_model_or_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluate\.models\[0\] \(rloo\): models/rloo/checkpoint is not a checkpoint"):
        check_config(EvaluateConfig(models=[{"name": "rloo", "path": "models/rloo/checkpoint"}]))
    tok = train_char([alphabet()])
    ckpt = tiny_bundle(tmp_path / "ckpt", tok, ["a"])
    with pytest.raises(ConfigError, match=r"core_metric: 'f1'"):
        check_config(EvaluateConfig(models=[{"name": "m", "path": str(ckpt)}], core_metric="f1"))
    with pytest.raises(ConfigError, match=r"used twice"):
        check_config(EvaluateConfig(models=[{"name": "m", "path": str(ckpt)}],
                                    tasks=[{"name": "heldout_last_word", "format": "lambada", "path": "x"}]))
    with pytest.raises(ConfigError, match=r"evaluate\.models: a name is used twice"):
        check_config(EvaluateConfig(models=[{"name": "m", "path": str(ckpt)}] * 2))


def test_defaults_equal_params_yaml():
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"]
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(EvaluateConfig)}
    assert {k: defaults[k] for k in section} == section
    assert dataclasses.asdict(DerivedConfig()) == section["derived"]


def stage_project(root: Path, tasks: list[dict]) -> dict:
    """A project folder with two tiny bundles, an evaluation set and its token shards; its params."""
    text = numbered("w", 400)
    write_evalset(root / "data/evalset/corpus", [("play", "eval", text)])
    tok = train_char([alphabet()])
    write_token_shard([text], tok, root / "data/tokens/eval/eval.bin")
    tiny_bundle(root / "models/a/checkpoint", tok, [text])
    tiny_bundle(root / "models/b/checkpoint", tok, ["w1 w2"])
    return {"evaluate": {"models": [{"name": "knows", "path": "models/a/checkpoint"},
                                    {"name": "other", "path": "models/b/checkpoint"}], "tasks": tasks,
                         "derived": {"items": 8, "context_words": 8, "continuation_words": 2, "choices": 4}}}


def test_stage_stops_on_a_bad_task_row_in_one_line_before_any_work(tmp_path, monkeypatch):
    from flows.evaluate import main

    monkeypatch.chdir(tmp_path)
    params = stage_project(tmp_path, [{"name": "piqa", "format": "piqa", "path": "piqa.jsonl"}])
    write_jsonl(tmp_path / "piqa.jsonl", [CRAFTED["piqa"][0], {"goal": "g", "sol1": "a", "label": 0}])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"^evaluate: piqa\.jsonl:2: field 'sol2' missing or not a non-empty string$"):
        main([])
    assert not (tmp_path / "models/evaluate").exists() and not (tmp_path / "metrics").exists()


def test_stage_writes_metrics_report_items_and_plots(tmp_path, monkeypatch, prefect_harness):
    from flows.evaluate import evaluate

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "generic.jsonl", CRAFTED["generic"])
    params = stage_project(tmp_path, [{"name": "mine", "format": "generic", "path": "generic.jsonl"}])
    evaluate(params)
    metrics = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    assert set(metrics["models"]) == {"knows", "other"}
    assert set(metrics["tasks"]) == {"heldout_continuation", "heldout_last_word", "mine"}
    knows = metrics["models"]["knows"]
    assert knows["tasks"]["heldout_last_word"]["n"] == 8 and "seconds" not in knows  # timings elsewhere
    assert knows["eval_bpb"] < metrics["models"]["other"]["eval_bpb"]
    assert knows["core"] == pytest.approx(core_score(knows["tasks"]))
    items = (tmp_path / "models/evaluate/tasks/mine.jsonl").read_text().splitlines()
    assert len(items) == 2 and json.loads(items[0])["choices"][1] == " made me glad"
    assert "| knows |" in (tmp_path / "models/evaluate/report.md").read_text()
    assert (tmp_path / "plots/evaluate/core.csv").read_text().splitlines()[0] == "model,core,eval_bpb"
    assert (tmp_path / "plots/evaluate/scores.png").read_bytes()[:4] == b"\x89PNG"
