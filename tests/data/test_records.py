"""Problem records from JSONL, Parquet and datasets dirs: gold answers by format, fields, and errors
that name the file, the line or row, and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_rl.data.records import (
    AnswerFormat,
    Fields,
    gold_of,
    last_boxed,
    load_problems,
)
from slurm_rl.data.synthetic import word_problem_splits, word_problems, write_records
from slurm_rl.errors import BadInput

GSM = [{"question": "Tom has 40 apples and buys 2. How many?", "answer": "40 + 2 = 42\n#### 42"},
       {"question": "Half of 10?", "answer": "10 / 2 = 5\n#### 5", "id": "half"}]
MATH = [{"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "solution": "It is $\\boxed{\\frac{3}{4}}$.",
         "level": "Level 2", "type": "Algebra"},
        {"problem": "Solve $x+1=3$.", "solution": "First $\\boxed{1}$ was wrong; $x=\\boxed{2}$."}]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ""])
def test_gsm8k_and_math_records_in_every_format(tmp_path: Path, suffix: str) -> None:
    g = load_problems(write_records(GSM, tmp_path / f"gsm{suffix or '-ds'}"), fmt="gsm8k")
    assert [p.answer for p in g] == ["42", "5"] and g[0].prompt == GSM[0]["question"]
    assert g[0].meta["solution"] == GSM[0]["answer"] and g[1].id == "half"
    m = load_problems(write_records(MATH, tmp_path / f"math{suffix or '-ds'}"), fmt="math")
    assert [p.answer for p in m] == ["\\frac{3}{4}", "2"]             # the LAST boxed answer
    assert m[0].meta["level"] == "Level 2" and m[0].to_json()["solution"] == MATH[0]["solution"]


def test_default_ids_name_the_line_or_row(tmp_path: Path) -> None:
    recs = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]
    assert [p.id for p in load_problems(write_records(recs, tmp_path / "a.jsonl"))] == ["a:1", "a:2"]
    assert [p.id for p in load_problems(write_records(recs, tmp_path / "b.parquet"))] == ["b:0", "b:1"]


def test_a_datasets_dict_dir_has_splits(tmp_path: Path) -> None:
    import datasets

    datasets.disable_progress_bars()
    d = tmp_path / "gsm8k"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM),
                          "test": datasets.Dataset.from_list(GSM[:1])}).save_to_disk(str(d))
    assert len(load_problems(d)) == 2                                 # train by default
    assert [p.answer for p in load_problems(d, split="test")] == ["42"]
    with pytest.raises(BadInput, match=r"no split 'validation'.*\['test', 'train'\]"):
        load_problems(d, split="validation")


def test_configured_field_names(tmp_path: Path) -> None:
    path = write_records([{"q": "How many?", "final": 7, "uid": 11, "src": "x"}], tmp_path / "c.parquet")
    (p,) = load_problems(path, fields=Fields(prompt="q", answer="final", id="uid"))
    assert (p.id, p.prompt, p.answer, p.meta) == ("11", "How many?", "7", {"src": "x"})
    with pytest.raises(BadInput, match=r"c\.parquet: row 0: no field 'question' \(the prompt field"):
        load_problems(path, fields=Fields(prompt="question"))


def test_raw_line_and_paragraph_separators_inside_a_string_load(tmp_path: Path) -> None:
    # valid JSON may hold U+2028/U+2029 raw; str.splitlines() would cut the line there
    path = tmp_path / "sep.jsonl"
    path.write_text('{"prompt": "a\u2028b\u2029c\x85d", "answer": "1"}\r\n{"prompt": "e", "answer": "2"}\n',
                    encoding="utf-8")
    a, b = load_problems(path)
    assert a.prompt == "a\u2028b\u2029c\x85d" and (a.id, b.id) == ("sep:1", "sep:2")


@pytest.mark.parametrize(("records", "fmt", "match"), [
    ([GSM[0], {"question": "Q", "answer": "no marker here"}], "gsm8k",
     r"bad\.jsonl:2: field 'answer' has no gold answer \(gsm8k format needs a final answer after '####'\)"),
    ([{"problem": "P", "solution": "The answer is \\boxed{3"}], "math",
     r"bad\.jsonl:1: field 'solution' has no gold answer \(math format needs a closed \\boxed"),
    ([{"question": "", "answer": "#### 1"}], "auto", r"bad\.jsonl:1: field 'question' \(the prompt\) must be"),
    ([{"question": "Q", "answer": ["1"]}], "auto", r"bad\.jsonl:1: field 'answer' \(the answer\) must be"),
    ([{"question": "Q"}], "auto", r"bad\.jsonl:1: missing key 'answer' or 'solution'"),
    ([{"id": 1, "prompt": "a", "answer": 1}, {"id": 1, "prompt": "b", "answer": 2}], "auto",
     r"bad\.jsonl:2: duplicate id '1' \(first at .*bad\.jsonl:1\)"),
])
def test_bad_records_name_file_line_and_field(tmp_path: Path, records, fmt: str, match: str) -> None:
    path = write_records(records, tmp_path / "bad.jsonl")
    with pytest.raises(BadInput, match=match) as e:
        load_problems(path, fmt=fmt)
    assert e.value.exit_code == 2


def test_bad_parquet_row_is_named(tmp_path: Path) -> None:
    path = write_records([GSM[0], {"question": "Q", "answer": "nothing"}], tmp_path / "bad.parquet")
    with pytest.raises(BadInput, match=r"bad\.parquet: row 1: field 'answer' has no gold answer"):
        load_problems(path, fmt="gsm8k")


@pytest.mark.parametrize(("name", "content", "match"), [
    ("x.jsonl", '{"prompt": "a", "answer": "1"}\n{"prompt": \n', r"x\.jsonl:2: not valid JSON"),
    ("x.parquet", "not parquet", r"x\.parquet: not a readable Parquet file"),
    ("x.csv", "a,b\n", r"unknown problem file type '\.csv'"),
    ("x.jsonl", "", r"x\.jsonl: no problems in it"),
])
def test_unreadable_files(tmp_path: Path, name: str, content: str, match: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(BadInput, match=match):
        load_problems(tmp_path / name)


def test_missing_paths_and_foreign_dirs(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        load_problems(tmp_path / "nope.parquet")
    with pytest.raises(BadInput, match="not a Hugging Face datasets directory"):
        load_problems(tmp_path)


def test_gold_extraction() -> None:
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{a}{b}} c") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{2} then \\boxed{oops") == "2"              # an unclosed last one: the one before
    assert last_boxed("\\fbox{9}") == "9" and last_boxed("none") is None
    assert gold_of("x\n#### 1,000", AnswerFormat.AUTO) == "1,000"
    assert gold_of("$\\boxed{3}$", AnswerFormat.AUTO) == "3"
    assert gold_of("  Paris ", AnswerFormat.AUTO) == "Paris"
    assert gold_of("#### ", AnswerFormat.GSM8K) is None


def test_synthetic_word_problems_are_correct_and_held_out() -> None:
    train, ev = word_problem_splits(500, 40, seed=0, ops=("+", "-"), max_operand=9, max_answer=9)
    assert len(train) == 500 and len(ev) == 40
    assert not {r["question"] for r in ev} & {r["question"] for r in train}         # held out
    for r in train + ev:
        a, b = (int(w) for w in r["question"].split() if w.isdigit())
        gold = int(r["answer"].rsplit("####", 1)[1])
        assert gold == (a + b if "more" in r["question"] else a - b) and 0 <= gold <= 9
    assert word_problems(5, seed=1) == word_problems(5, seed=1) != word_problems(5, seed=2)
    (m,) = word_problems(1, seed=0, style="math")
    assert set(m) == {"id", "problem", "solution", "level", "type"} and "\\boxed{" in m["solution"]
    with pytest.raises(BadInput, match="distinct problems"):
        word_problem_splits(10, 10_000, seed=0)


def test_synthetic_files_round_trip(tmp_path: Path) -> None:
    recs = word_problems(30, seed=0, style="math")
    for suffix in (".jsonl", ".parquet", ""):
        ps = load_problems(write_records(recs, tmp_path / f"m{suffix or '-dir'}"), fmt="math")
        assert [p.answer for p in ps] == [r["solution"].rsplit("{", 1)[1].split("}")[0] for r in recs]
    assert json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0]) == recs[0]
