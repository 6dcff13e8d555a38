"""Zero-shot task files in the common shapes, read into one item shape before any model loads.

Every reader returns items of one of two kinds (text, not tokens: each model encodes with its own
tokenizer):

- multiple choice: {"context": str, "choices": [str, ...], "label": int}; each choice already starts
  with its delimiter (" " by default, as lm-eval-harness' target_delimiter), so it is scored as the
  continuation of the context exactly as written;
- last word (LAMBADA): {"context": str, "target": str}; the target (" " + last word) must be the
  model's greedy continuation, token by token.

Formats and the prompts they make (lm-eval-harness' zero-shot templates):

  hellaswag   {"ctx", "endings", "label"}            ctx -> " " + ending
  arc         {"question", "choices": {"text", "label"}, "answerKey"}
              (or the AI2 shape {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"})
                                                     "Question: {q}\\nAnswer:" -> " " + choice
  openbookqa  {"question_stem", "choices", "answerKey"} (or the AI2 shape)   question -> " " + choice
  piqa        {"goal", "sol1", "sol2", "label"}      "Question: {goal}\\nAnswer:" -> " " + sol
  lambada     {"text"}                               text minus its last word -> " " + last word
  generic     {"context", "choices", "label"}        context -> delimiter + choice

A missing file, a bad line or a row without its fields raises ConfigError naming file, row and field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lmtrain.config import ConfigError

FORMATS = ("hellaswag", "arc", "openbookqa", "piqa", "lambada", "generic")
LAST_WORD = "last_word"
MULTIPLE_CHOICE = "multiple_choice"


@dataclass(frozen=True)
class TaskSpec:
    """One entry of params `evaluate.tasks`: a name, a format, a local JSONL file."""

    name: str
    format: str
    path: str
    delimiter: str = " "  # between context and choice (generic format); the other formats use " "

    @property
    def kind(self) -> str:
        return LAST_WORD if self.format == "lambada" else MULTIPLE_CHOICE


def task_spec(entry: object, where: str) -> TaskSpec:
    """A TaskSpec from one params entry, checked (keys, format) before any file is read."""
    if not isinstance(entry, dict):
        raise ConfigError(f"params {where}: expected a mapping {{name, format, path}}, got {entry!r}")
    unknown = sorted(set(entry) - {"name", "format", "path", "delimiter"})
    if unknown:
        raise ConfigError(f"params {where}: unknown key(s) {unknown}; known: delimiter, format, name, path")
    for key in ("name", "format", "path"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"params {where}.{key}: missing or not a non-empty string")
    if entry["format"] not in FORMATS:
        raise ConfigError(f"params {where}.format: {entry['format']!r} is not one of {list(FORMATS)}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", entry["name"]):
        raise ConfigError(f"params {where}.name: {entry['name']!r} may hold only letters, digits, '_', '.', '-'")
    if not isinstance(entry.get("delimiter", " "), str):
        raise ConfigError(f"params {where}.delimiter: not a string")
    return TaskSpec(entry["name"], entry["format"], entry["path"], entry.get("delimiter", " "))


class _Row:
    """Field access for one JSONL row that fails with the file, row and field."""

    def __init__(self, where: str, row: object) -> None:
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}")
        self.where, self.row = where, row

    def fail(self, field: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: field {field!r} {problem}")

    def text(self, field: str, value: object = None) -> str:
        value = self.row.get(field) if value is None else value
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, "missing or not a non-empty string")
        return value

    def texts(self, field: str, value: object = None) -> list[str]:
        value = self.row.get(field) if value is None else value
        if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) and v for v in value):
            raise self.fail(field, "missing or not a list of at least two non-empty strings")
        return value

    def index(self, field: str, n: int) -> int:
        value = self.row.get(field)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # the HuggingFace copies store labels as strings
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(field, "missing or not an integer")
        if not 0 <= value < n:
            raise self.fail(field, f"= {value} outside 0..{n - 1}")
        return value


def _hellaswag_text(text: str) -> str:
    """lm-eval-harness' HellaSwag clean-up (WikiHow '[title]' markers and bracketed tags out), then the
    ends stripped so a leading tag leaves no double space after the delimiter."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ").strip()


def _hellaswag(r: _Row) -> dict:
    endings = r.texts("endings")
    return {"context": _hellaswag_text(r.text("ctx")), "choices": [" " + _hellaswag_text(e) for e in endings],
            "label": r.index("label", len(endings))}


def _lettered_choices(r: _Row) -> tuple[str, list[str], int]:
    """(question, choice texts, index of answerKey) from the HuggingFace or the AI2 ARC/OpenBookQA shape."""
    question = r.row.get("question")
    if isinstance(question, dict):  # AI2: {"question": {"stem", "choices": [{"text", "label"}]}}
        stem, choices = r.text("question.stem", question.get("stem")), question.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise r.fail("question.choices", "missing or not a list of {text, label}")
        texts = r.texts("question.choices[].text", [c.get("text") for c in choices])
        labels = [str(c.get("label")) for c in choices]
    else:
        stem = r.text("question_stem") if "question_stem" in r.row else r.text("question")
        choices = r.row.get("choices")
        if not isinstance(choices, dict):
            raise r.fail("choices", "missing or not a mapping {text: [...], label: [...]}")
        texts = r.texts("choices.text", choices.get("text"))
        labels = [str(x) for x in choices.get("label") or []]
        if len(labels) != len(texts):
            raise r.fail("choices.label", f"has {len(labels)} labels for {len(texts)} texts")
    key = r.row.get("answerKey")
    if not isinstance(key, str | int) or str(key) not in labels:
        raise r.fail("answerKey", f"= {key!r} is not one of the choice labels {labels}")
    return stem, texts, labels.index(str(key))


def _arc(r: _Row) -> dict:
    question, texts, label = _lettered_choices(r)
    return {"context": f"Question: {question}\nAnswer:", "choices": [" " + t for t in texts], "label": label}


def _openbookqa(r: _Row) -> dict:
    question, texts, label = _lettered_choices(r)
    return {"context": question, "choices": [" " + t for t in texts], "label": label}


def _piqa(r: _Row) -> dict:
    sols = [r.text("sol1"), r.text("sol2")]
    return {"context": f"Question: {r.text('goal')}\nAnswer:", "choices": [" " + s for s in sols],
            "label": r.index("label", 2)}


def _lambada(r: _Row) -> dict:
    text = r.text("text").rstrip()
    context, _, word = text.rpartition(" ")
    if not context.strip():
        raise r.fail("text", "has no context before its last word")
    return {"context": context, "target": " " + word}


def _generic(r: _Row, delimiter: str) -> dict:
    choices = r.texts("choices")
    return {"context": r.text("context"), "choices": [delimiter + c for c in choices],
            "label": r.index("label", len(choices))}


def read_task(spec: TaskSpec, max_items: int = 0) -> list[dict]:
    """The first `max_items` items (0 = all) of a task file, every row checked as it is read."""
    path = Path(spec.path)
    if not path.is_file():
        raise ConfigError(f"task {spec.name!r}: file not found: {path}")
    readers = {"hellaswag": _hellaswag, "arc": _arc, "openbookqa": _openbookqa, "piqa": _piqa,
               "lambada": _lambada, "generic": lambda r: _generic(r, spec.delimiter)}
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: not a JSON object ({e.msg})") from e
            items.append(readers[spec.format](_Row(where, row)))
            if max_items and len(items) == max_items:
                break
    if not items:
        raise ConfigError(f"task {spec.name!r}: {path} holds no rows")
    return items


def write_items(items: list[dict], path: str | Path) -> Path:
    """Items as JSONL (the generic or lambada shape, delimiters inside the choices), for inspection."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path


def read_items(path: str | Path) -> list[dict]:
    """Items written by write_items."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
