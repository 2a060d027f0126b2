"""Problem records from JSONL, Parquet and Hugging Face `datasets` directories.

A record is a mapping with a prompt field and an answer field; which ones is configurable
(`task.fields`), else the first present of `prompt`/`question`/`problem` and of
`answer`/`solution`. The gold answer is read from the answer field by its format:

  gsm8k  the text after the last `####` (GSM8K: `"...worked solution\\n#### 72"`)
  math   the contents of the last `\\boxed{...}` (MATH: `"... so it is $\\boxed{\\frac{1}{2}}$."`)
  plain  the whole field, stripped
  auto   gsm8k if the field has `####`, else math if it has `\\boxed{`, else plain

Every problem with a record is named in errors by file and line (JSONL, 1-based) or row (Parquet
and datasets dirs, 0-based) and field, and nothing is half-loaded: a bad record stops the load.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm_rl.errors import BadInput, EnvironmentProblem
from slurm_rl.rl.task import Problem

PROMPT_FIELDS = ("prompt", "question", "problem")
ANSWER_FIELDS = ("answer", "solution")
_MARKER = "####"
_BOXED = ("\\boxed{", "\\fbox{")


class AnswerFormat(str, enum.Enum):
    AUTO = "auto"
    GSM8K = "gsm8k"
    MATH = "math"
    PLAIN = "plain"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Fields:
    """Which record fields hold the prompt, the answer and the id (None: the usual names / none)."""

    prompt: str | None = None
    answer: str | None = None
    id: str | None = None


def last_boxed(text: str) -> str | None:
    """The contents of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced; None if none
    is closed."""
    start = max(text.rfind(b) for b in _BOXED)
    while start >= 0:
        i = text.index("{", start) + 1
        depth, j = 1, i
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            return text[i:j - 1].strip()
        start = max(text.rfind(b, 0, start) for b in _BOXED)
    return None


def gold_of(answer: str, fmt: AnswerFormat) -> str | None:
    """The gold answer in an answer field of format `fmt`, or None if it has none."""
    if fmt is AnswerFormat.AUTO:
        fmt = AnswerFormat.GSM8K if _MARKER in answer else (
            AnswerFormat.MATH if any(b in answer for b in _BOXED) else AnswerFormat.PLAIN)
    if fmt is AnswerFormat.GSM8K:
        if _MARKER not in answer:
            return None
        gold = answer.rsplit(_MARKER, 1)[1].strip()
        return gold or None
    if fmt is AnswerFormat.MATH:
        return last_boxed(answer) or None
    return answer.strip() or None


# ----------------------------------------------------------------------------- reading files


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: problem file not found") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read problem file: {e}") from None
    # split on \n alone: str.splitlines() also splits on U+2028/U+2029 and other separators that
    # valid JSON may hold raw inside a string
    for lineno, line in enumerate(data.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - a core dependency
        raise EnvironmentProblem("reading Parquet needs pyarrow", hint="pip install pyarrow") from None
    try:
        f = pq.ParquetFile(path)
    except FileNotFoundError:
        raise BadInput(f"{path}: problem file not found") from None
    except Exception as e:          # pyarrow raises ArrowInvalid and friends on a damaged file
        raise BadInput(f"{path}: not a readable Parquet file ({e})") from None
    row = 0
    for batch in f.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            yield f"{path}: row {row}", rec
            row += 1


def _hf_dir(path: Path, split: str | None) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - a core dependency
        raise EnvironmentProblem("reading a datasets directory needs the `datasets` package",
                                 hint="pip install datasets") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:          # FileNotFoundError or a datasets error on a foreign dir
        raise BadInput(f"{path}: not a Hugging Face datasets directory ({e})",
                       hint="write it with Dataset.save_to_disk / DatasetDict.save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in ds else None
        if split not in ds:
            raise BadInput(f"{path}: no split {split!r} in this datasets directory (splits: {sorted(ds)})",
                           hint="set task.split (and task.eval_split) to one of them")
        ds, where = ds[split], f"{path}[{split}]"
    else:
        where = str(path)
    for row, rec in enumerate(ds):
        yield f"{where}: row {row}", rec


def read_records(path: str | Path, *, split: str | None = None) -> Iterator[tuple[str, Any]]:
    """(where, record) for each record of a `.jsonl`/`.json` file, a `.parquet` file or a datasets dir."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()
                or (path / "state.json").exists()):
            raise BadInput(f"{path} is a directory but not a Hugging Face datasets directory",
                           hint="point task.path at a .jsonl or .parquet file, or a save_to_disk directory")
        return _hf_dir(path, split)
    if not path.exists():
        raise BadInput(f"{path}: problem file not found")
    if path.suffix == ".parquet":
        return _parquet(path)
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        return _jsonl(path)
    raise BadInput(f"{path}: unknown problem file type {path.suffix!r}",
                   hint="use JSON Lines (.jsonl), Parquet (.parquet) or a datasets save_to_disk directory")


# ----------------------------------------------------------------------------- records -> problems


def _pick(rec: Mapping[str, Any], configured: str | None, usual: Sequence[str], what: str, where: str) -> str:
    if configured is not None:
        if configured not in rec:
            raise BadInput(f"{where}: no field {configured!r} (the {what} field; fields here: {sorted(rec)})",
                           hint=f"set task.fields.{what} to the field that holds the {what}")
        return configured
    for name in usual:
        if name in rec:
            return name
    raise BadInput(f"{where}: missing key {' or '.join(repr(u) for u in usual)} (keys present: {sorted(rec)})",
                   hint=f"name the {what} field with task.fields.{what}")


def to_problems(records: Iterator[tuple[str, Any]], *, source: str, fmt: AnswerFormat = AnswerFormat.AUTO,
                fields: Fields = Fields(), id_prefix: str | None = None) -> list[Problem]:
    """Validate records and make them `Problem`s: `answer` is the gold answer, the other fields (the
    full answer text included, under `solution` when the gold was read out of it) go to `meta`."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    prefix = id_prefix if id_prefix is not None else Path(source).stem
    for n, (where, rec) in enumerate(records):
        if not isinstance(rec, Mapping):
            raise BadInput(f"{where}: expected a JSON object, got {type(rec).__name__}")
        pf = _pick(rec, fields.prompt, PROMPT_FIELDS, "prompt", where)
        af = _pick(rec, fields.answer, ANSWER_FIELDS, "answer", where)
        prompt, answer = rec[pf], rec[af]
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadInput(f"{where}: field {pf!r} (the prompt) must be a non-empty string, got "
                           f"{type(prompt).__name__} {str(prompt)[:40]!r}")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise BadInput(f"{where}: field {af!r} (the answer) must be a string or a number, got "
                           f"{type(answer).__name__}")
        text = str(answer)
        gold = gold_of(text, fmt)
        if gold is None:
            need = {AnswerFormat.GSM8K: "a final answer after '####'", AnswerFormat.MATH: "a closed \\boxed{...}"
                    }.get(fmt, "a non-empty answer")
            raise BadInput(f"{where}: field {af!r} has no gold answer ({fmt.value} format needs {need}): "
                           f"{text[-60:]!r}", hint="fix the record, or set task.format to the answer's format")
        if fields.id is not None:
            if fields.id not in rec or rec[fields.id] is None:
                raise BadInput(f"{where}: no field {fields.id!r} (the id field; fields here: {sorted(rec)})")
            pid = str(rec[fields.id])
        elif "id" in rec and rec["id"] is not None:
            pid = str(rec["id"])
        else:
            pid = f"{prefix}:{where.rsplit(':', 1)[-1].strip().removeprefix('row ')}" if ":" in where \
                else f"{prefix}:{n}"
        if pid in seen:
            raise BadInput(f"{where}: duplicate id {pid!r} (first at {seen[pid]})")
        seen[pid] = where
        meta = {k: v for k, v in rec.items() if k not in (pf, af, fields.id or "id")}
        if gold != text.strip():
            meta["solution"] = text
        problems.append(Problem(id=pid, prompt=prompt, answer=gold, meta=_jsonable(meta)))
    if not problems:
        raise BadInput(f"{source}: no problems in it", hint="write one record per line (JSONL) or row (Parquet)")
    return problems


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    """Extra fields as JSON can hold them (a Parquet/Arrow value may be a date, bytes, a numpy type)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            json.dumps(v)
            out[str(k)] = v
        except (TypeError, ValueError):
            out[str(k)] = str(v)
    return out


def load_problems(path: str | Path, *, fmt: AnswerFormat | str = AnswerFormat.AUTO, fields: Fields = Fields(),
                  split: str | None = None) -> list[Problem]:
    """Read and validate a whole problem file or datasets dir (`BadInput` names file, line/row, field)."""
    fmt = AnswerFormat(fmt)
    return to_problems(read_records(path, split=split), source=str(path), fmt=fmt, fields=fields)
