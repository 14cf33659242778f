"""gcpo ingest / sets / problems: every shared data file, every format, every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gcpo_cli.cli import app
from gcpo_cli.errors import GcpoError
from gcpo_cli.store import open_db
from gcpo_cli.rows import problem_id
from gcpo_cli.ingest import ensure_synthetic_set, ingest_rows, ingest_source

from conftest import SHARED_DATA


def _json(result) -> dict | list:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _fails(result, *needles: str) -> str:
    """A user error: exit 1, one clean message (no traceback) that names every needle."""
    out = result.output
    assert result.exit_code == 1, out
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in out and out.startswith("error:"), out
    flat = " ".join(out.split())
    for n in needles:
        assert n in flat, (n, out)
    return flat


def _nothing_written(db_path: Path) -> None:
    if not db_path.exists():
        return
    db = open_db(db_path)
    counts = {t: db[t].count for t in ("problems", "problem_sets", "set_problems", "golden_answers", "ingests")}
    db.close()
    assert not any(counts.values()), counts


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the shared data files

# file -> (rows read, added, present, golden total, least golden verified, first row's answer)
# (AIME and MathQA solutions that state no final answer are completed with the row's: issue 25 item 8)
SHARED = {
    "aime24/test.jsonl": (30, 30, 0, 30, 30, "204"),
    "aime_1983_2023/train.jsonl": (975, 975, 0, 975, 975, "60"),
    "amc23/test.jsonl": (40, 40, 0, 0, 0, "27"),
    "deepmath_5k/train.jsonl": (4994, 4994, 0, 0, 0, "1"),
    "gsm8k/test.jsonl": (1319, 1319, 0, 1319, 1319, "18"),
    "gsm8k/train.jsonl": (7473, 7473, 0, 7473, 7473, "72"),
    "math500/test.jsonl": (500, 500, 0, 500, 495, r"\left( 3, \frac{\pi}{2} \right)"),
    "mathqa/test.jsonl": (1000, 1000, 0, 1000, 990, "a"),
    "mawps/test.jsonl": (2065, 2065, 0, 0, 0, "43"),  # 86 repeated rows: each a problem
    "minerva_math/test.jsonl": (272, 272, 0, 272, 272, "1.6"),
    "svamp/test.jsonl": (1000, 1000, 0, 0, 0, "145"),
}
# These two hold a few rows without a usable answer: strict by default, --skip-invalid lands the rest.
# file -> (first bad line, field, rows read, rejected, added, present)
SHARED_INVALID = {
    "math_train/rllm_math_train_answers.jsonl": ("line 887", "'answer' is null", 7474, 4, 7470, 0),
    "math_train/train.jsonl": ("line 5530", "'solution' states no final answer", 7500, 2, 7498, 0),
}


def _set_name(rel: str) -> str:
    return rel.replace("/", "-").removesuffix(".jsonl")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Every shared file through `gcpo ingest` once, with no flags (and --skip-invalid where needed)."""
    from typer.testing import CliRunner

    if not SHARED_DATA.exists():
        pytest.fail(f"shared data folder not found at {SHARED_DATA}")
    db_path = tmp_path_factory.mktemp("shared") / "gcpo.db"
    runner, results = CliRunner(), {}
    for rel in sorted(SHARED) + sorted(SHARED_INVALID):
        args = ["ingest", str(SHARED_DATA / rel), "--set", _set_name(rel), "--db", str(db_path), "--json"]
        results[rel] = runner.invoke(app, args)
        if rel in SHARED_INVALID:
            results[rel, "skip"] = runner.invoke(app, args + ["--skip-invalid"])
    return db_path, results


def _first_problem(db_path: Path, set_name: str) -> dict:
    db = open_db(db_path)
    row = db.execute(
        "SELECT p.id, p.text, p.answer, p.metadata_json, sp.source_id FROM set_problems sp"
        " JOIN problems p ON p.id = sp.problem_id JOIN problem_sets s ON s.id = sp.set_id"
        " WHERE s.name = ? ORDER BY sp.position LIMIT 1", [set_name]).fetchone()
    db.close()
    return dict(zip(("id", "text", "answer", "metadata", "source_id"), row[:3] + (json.loads(row[3]), row[4])))


@pytest.mark.parametrize("rel", sorted(SHARED))
def test_shared_file_ingests_with_no_flags(shared, rel):
    db_path, results = shared
    rows, added, present, golden, verified_min, first_answer = SHARED[rel]
    r = _json(results[rel])
    assert (r["rows_read"], r["added"], r["present"], r["rejected"]) == (rows, added, present, 0)
    assert r["golden_total"] == golden and r["golden_verified"] >= verified_min
    assert len(r["mismatches"]) == golden - r["golden_verified"]
    assert _first_problem(db_path, _set_name(rel))["answer"] == first_answer


def test_shared_files_field_details(shared):
    db_path, results = shared
    svamp = _first_problem(db_path, "svamp-test")
    assert svamp["text"] == ("There are 87 oranges and 290 bananas in Philip's collection. If the bananas are "
                             "organized into 2 groups and oranges are organized into 93 groups How big is each "
                             "group of bananas?")
    assert svamp["source_id"] == "chal-777" and svamp["metadata"]["Equation"] == "( 290.0 / 2.0 )"
    mathqa = _first_problem(db_path, "mathqa-test")
    assert mathqa["text"].startswith("if log 8 x + log 8 1 / 6 = 1 / 3 , then the value of x is :")
    assert mathqa["text"].endswith("Options: a ) 12 , b ) 16 , c ) 18 , d ) 24 , e ) 26")
    # The rllm file (ingested first) and MATH train share problems: stored once, metadata merged.
    math = _first_problem(db_path, "math_train-train")
    assert math["answer"] == "0" and math["metadata"] == {"difficulty": 5.0, "level": 5, "type": "Algebra"}
    assert math["source_id"] == "train/algebra/0.json"
    deep = _first_problem(db_path, "deepmath_5k-train")
    # `messages` repeats the prompt; the empty code fields carry nothing: neither is kept.
    assert deep["metadata"] == {"difficulty": 4.5, "source": "deepmath_103k", "tag": "deepmath_103k"}
    # mawps repeats one problem text with another answer: each row is a problem (issue 13), reported.
    variants = json.loads(results["mawps/test.jsonl"].stdout)["variants"]
    assert [(v["where"], v["other_answer"], v["answer"]) for v in variants] == [("line 1006", "6", "30")]
    aime = _first_problem(db_path, "aime24-test")
    assert "question" not in aime["metadata"] and aime["source_id"] == "60"
    db = open_db(db_path)
    gsm = db.execute("SELECT g.text, g.final_answer, g.verified, g.source_file FROM golden_answers g"
                     " WHERE g.problem_id = ?", [_first_problem(db_path, "gsm8k-test")["id"]]).fetchall()
    # GSM8K writes "2,125" after ####; the stored answer drops the thousands separator.
    big = db.execute("SELECT answer FROM problems WHERE text LIKE 'Johnny is picking up the toys%'").fetchall()
    db.close()
    assert len(gsm) == 1 and gsm[0][1:3] == ("18", 1) and gsm[0][0].endswith("#### 18")
    assert gsm[0][3] == str(SHARED_DATA / "gsm8k/test.jsonl")  # the file it was read from
    assert big == [("2125",)]


@pytest.mark.parametrize("rel", sorted(SHARED_INVALID))
def test_shared_files_with_answerless_rows(shared, rel):
    db_path, results = shared
    where, field, rows, rejected, added, present = SHARED_INVALID[rel]
    _fails(results[rel], rel, f"{where}:", f"field {field}", "--skip-invalid", "nothing was written")
    r = _json(results[rel, "skip"])
    assert (r["rows_read"], r["rejected"], r["added"], r["present"]) == (rows, rejected, added, present)
    assert r["rejects"][0]["where"] == where and len(r["rejects"]) == rejected


def test_sets_lists_coverage_and_verified_share(shared, runner):
    db_path, _ = shared
    sets = {s["name"]: s for s in _json(runner.invoke(app, ["sets", "--json", "--db", str(db_path)]))}
    assert len(sets) == len(SHARED) + len(SHARED_INVALID)
    assert sets["gsm8k-test"]["problems"] == 1319
    assert sets["gsm8k-test"]["golden_coverage"] == 1.0 and sets["gsm8k-test"]["verified_share"] == 1.0
    assert sets["amc23-test"]["golden_coverage"] == 0.0 and sets["amc23-test"]["sources"][0].endswith("test.jsonl")
    assert sets["math500-test"]["verified_share"] >= 0.99 and sets["math500-test"]["golden_coverage"] == 1.0
    out = runner.invoke(app, ["sets", "--db", str(db_path)])
    assert out.exit_code == 0 and "gsm8k-test" in out.output and "1319" in out.output
    assert all(len(line) <= 80 for line in out.output.splitlines())


def test_problems_search_and_json(shared, runner):
    db_path, _ = shared
    args = ["problems", "--set", "gsm8k-test", "--db", str(db_path)]
    rows = _json(runner.invoke(app, args + ["--search", "duck eggs", "--json"]))
    assert rows and rows[0]["text"].startswith("Janet’s ducks lay 16 eggs per day")
    assert rows[0]["answer"] == "18" and rows[0]["golden"] == "verified"
    assert all("duck" in r["text"].lower() for r in rows)
    rows = _json(runner.invoke(app, args + ["--limit", "3", "--json"]))
    assert [r["position"] for r in rows] == [0, 1, 2]
    table = runner.invoke(app, args + ["--limit", "2"])
    assert table.exit_code == 0 and "Janet" in table.output and "verified" in table.output
    assert all(len(line) <= 80 for line in table.output.splitlines())
    # FTS syntax in the query is taken as words, not operators: no syntax error.
    rows = _json(runner.invoke(app, args + ["--search", 'eggs AND "', "--json"]))
    assert rows and all("eggs" in r["text"].lower() and " and " in r["text"].lower() for r in rows)
    _fails(runner.invoke(app, ["problems", "--set", "nope", "--db", str(db_path)]), "unknown set 'nope'; sets: ",
           "aime24-test", "more")
    # a unique prefix names a set, as everywhere; `_` is no wildcard
    assert _json(runner.invoke(app, ["problems", "--set", "gsm8k-te", "--db", str(db_path), "--json"]))
    _fails(runner.invoke(app, ["problems", "--set", "gsm8k_te", "--db", str(db_path)]), "unknown set 'gsm8k_te'")


# ------------------------------------------------------------------------------------------ formats

FORMAT_ROWS = [
    {"question": "What is 2 + 3?", "answer": "5", "level": "Level 1"},
    {"question": "What is 10 / 4?", "answer": "2.5", "level": "Level 2"},
    {"question": "Write seven with three digits.", "answer": "007", "level": "Level 3"},
]


def _make(fmt: str, tmp: Path, rows: list[dict]) -> tuple[Path, list[str]]:
    if fmt == "jsonl":
        return _write_jsonl(tmp / "d.jsonl", rows), []
    if fmt == "json":
        (tmp / "d.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
        return tmp / "d.json", []
    if fmt == "csv":
        import csv

        with open(tmp / "d.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return tmp / "d.csv", []
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp / "d.parquet")
        return tmp / "d.parquet", []
    import datasets

    if fmt == "folder":
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp / "saved"))
        return tmp / "saved", []
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp / "dd"))
    return tmp / "dd", ["--split", "train"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "folder", "datasetdict"])
def test_each_format(fmt, tmp_path, runner, db):
    path, extra = _make(fmt, tmp_path, FORMAT_ROWS)
    r = _json(runner.invoke(app, ["ingest", str(path), "--set", "small", "--json", *extra]))
    assert (r["rows_read"], r["added"], r["rejected"]) == (3, 3, 0)
    got = {row["text"]: (row["answer"], json.loads(row["metadata_json"])["level"]) for row in db["problems"].rows}
    # Values arrive as written: "007" stays text (pandas alone would make it 7), "Level 2" -> 2.
    assert got == {"What is 2 + 3?": ("5", 1), "What is 10 / 4?": ("2.5", 2),
                   "Write seven with three digits.": ("007", 3)}


def test_datasetdict_folder_needs_a_split(tmp_path, runner):
    path, _ = _make("datasetdict", tmp_path, FORMAT_ROWS)
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "x"]), "has splits train, test", "--split")
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "x", "--split", "dev"]), "no split 'dev'")


def test_json_array_keeps_mixed_types_and_line_numbers(tmp_path, runner, gcpo_home):
    rows = [{"problem": "A?", "answer": 27.0}, {"problem": "B?", "answer": ["x + 1"]},
            {"problem": "C?", "answer": "1/2"}, {"problem": "D?", "answer": None}]
    path = tmp_path / "mixed.json"
    text = json.dumps(rows, indent=2)
    path.write_text(text, encoding="utf-8")
    line = text[: text.index('"D?"')].count("\n")  # the line of the "{" that opens the 4th row
    assert line > 4
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "m"]), f"mixed.json: line {line}: field 'answer' is null")
    _nothing_written(gcpo_home / "gcpo.db")
    r = _json(runner.invoke(app, ["ingest", str(path), "--set", "m", "--skip-invalid", "--json"]))
    assert r["added"] == 3 and r["rejects"] == [{"where": f"line {line}", "reason": "field 'answer' is null"}]
    db = open_db(gcpo_home / "gcpo.db")
    assert sorted(row["answer"] for row in db["problems"].rows) == ["1/2", "27", "x + 1"]


def test_csv_line_numbers_count_multiline_fields(tmp_path, runner, gcpo_home):
    path = tmp_path / "q.csv"
    path.write_text('problem,answer\n"A long\nproblem?",3\nB?,4\nC?,\n', encoding="utf-8")
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "q"]), "q.csv: line 5: field 'answer' is null")
    _nothing_written(gcpo_home / "gcpo.db")


# ------------------------------------------------------------------------------------- bad inputs

GOOD = [{"problem": "What is 1 + 1?", "answer": "2"}, {"problem": "What is 2 + 2?", "answer": "4"}]


@pytest.mark.parametrize("case, content, needles", [
    ("malformed", b'{"problem": "What is 1 + 1?", "answer": "2"}\n\n{"problem": "x", "answer": \n',
     ["bad.jsonl: line 3:", "not valid JSON"]),
    ("missing-problem", b'{"problem": "What is 1 + 1?", "answer": "2"}\n{"answer": "4"}\n',
     ["bad.jsonl: line 2:", "field 'problem' is missing"]),
    ("no-problem-field", b'{"foo": "What is 1 + 1?", "answer": "2"}\n',
     ["bad.jsonl: no problem field found", "fields: foo, answer", "--problem"]),
    ("missing-answer", b'{"problem": "What is 1 + 1?", "answer": "2"}\n{"problem": "What is 3 + 3?"}\n',
     ["bad.jsonl: line 2:", "field 'answer' is missing"]),
    ("no-answer-field", b'{"problem": "What is 1 + 1?"}\n', ["no answer field found", "--answer"]),
    ("empty-problem", b'{"problem": "What is 1 + 1?", "answer": "2"}\n{"problem": "  ", "answer": "4"}\n',
     ["bad.jsonl: line 2:", "field 'problem' is empty"]),
    ("empty-file", b"", ["bad.jsonl: the file is empty"]),
    ("blank-file", b"\n  \n", ["bad.jsonl: the file is empty"]),
    ("non-utf8", b'{"problem": "What is 1 + 1?", "answer": "2"}\n{"problem": "caf\xe9?", "answer": "4"}\n',
     ["bad.jsonl: line 2: not UTF-8", "0xe9"]),
    ("not-objects", b'[1, 2]\n', ["bad.jsonl: line 1:", "expected a JSON object"]),
])
def test_bad_jsonl_inputs(case, content, needles, tmp_path, runner, gcpo_home):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "bad"]), *needles)
    _nothing_written(gcpo_home / "gcpo.db")


@pytest.mark.parametrize("name, content, needles", [
    ("data.txt", b"What is 1 + 1?\n", ["data.txt: unknown format '.txt'", ".jsonl"]),
    ("data.parquet", b"this is not parquet", ["data.parquet: cannot read as PARQUET"]),
    ("data.json", b'[{"problem": "A?", "answer": "1"},\n {"problem": "B?" "answer": "2"}]',
     ["data.json: line 2: not valid JSON"]),
    ("data.json", b'{\n  "data": [{"problem": "A?", "answer": "1"}]\n}\n', ["data.json: no problem field found",
                                                                          "fields: data"]),
    ("data.csv", b"\n", ["data.csv: the file is empty"]),
    ("data.csv", b"problem,answer\n", ["data.csv: no rows after the header"]),
    ("data.csv", b'problem,answer\n"What is 1 + 1?,2\n', ["data.csv: cannot read as CSV"]),
])
def test_unreadable_formats(name, content, needles, tmp_path, runner, gcpo_home):
    path = tmp_path / name
    path.write_bytes(content)
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "bad"]), *needles)
    _nothing_written(gcpo_home / "gcpo.db")


def test_missing_file_and_folder(tmp_path, runner, gcpo_home):
    path = _write_jsonl(tmp_path / "ok.jsonl", GOOD)
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "x", "--split", "train"]), "--split applies to")
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "x", "--problem", "{problem"]), "malformed")
    _fails(runner.invoke(app, ["ingest", str(tmp_path / "nope.jsonl"), "--set", "x"]), "nope.jsonl: file not found")
    (tmp_path / "plain").mkdir()
    _fails(runner.invoke(app, ["ingest", str(tmp_path / "plain"), "--set", "x"]), "not a folder saved by datasets")
    _nothing_written(gcpo_home / "gcpo.db")


def test_hub_failure_is_one_clean_line(runner):
    # conftest sets HF_HUB_OFFLINE: this exercises the hub path's error handling without network.
    _fails(runner.invoke(app, ["ingest", "hf:no-such-org/no-such-set", "--set", "x"]),
           "hf:no-such-org/no-such-set: cannot load from the hub")


def test_skip_invalid_writes_good_rows_and_reports_each_skip(tmp_path, runner, db):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"problem": "What is 1 + 1?", "answer": "2"}\nnot json\n{"problem": "", "answer": "3"}\n'
                    '{"problem": "What is 2 + 2?", "answer": "4"}\n{"problem": "What is 5 + 5?"}\n', encoding="utf-8")
    out = runner.invoke(app, ["ingest", str(path), "--set", "m", "--skip-invalid"])
    assert out.exit_code == 0, out.output
    for needle in ("line 2", "not valid JSON", "line 3", "field 'problem' is empty", "line 5",
                   "field 'answer' is missing"):
        assert needle in out.output
    assert db["problems"].count == 2 and db["ingests"].count == 1
    assert next(db["ingests"].rows)["rejected"] == 3


# ----------------------------------------------------------------------------------- identity & flags


def test_reingest_is_a_noop(tmp_path, runner, db):
    path = _write_jsonl(tmp_path / "a.jsonl", GOOD)
    first = _json(runner.invoke(app, ["ingest", str(path), "--set", "s", "--json"]))
    again = _json(runner.invoke(app, ["ingest", str(path), "--set", "s", "--json"]))
    assert first["added"] == 2 and not first["noop"]
    assert again["noop"] and again["added"] == 0 and again["present"] == 2
    assert db["problems"].count == 2 and db["set_problems"].count == 2 and db["ingests"].count == 1
    out = runner.invoke(app, ["ingest", str(path), "--set", "s"])
    assert out.exit_code == 0 and "nothing to do" in " ".join(out.output.split())


def test_same_problem_in_two_sets_is_stored_once(tmp_path, runner, db):
    a = _write_jsonl(tmp_path / "a.jsonl", GOOD)
    # Same first problem with other whitespace, from another file, with a worked solution.
    b = _write_jsonl(tmp_path / "b.jsonl", [{"problem": "What  is 1 +\n1?", "solution": "1+1 = \\boxed{2}"},
                                            {"problem": "What is 9 + 9?", "solution": "\\boxed{18}"}])
    _json(runner.invoke(app, ["ingest", str(a), "--set", "one", "--json"]))
    r = _json(runner.invoke(app, ["ingest", str(b), "--set", "two", "--json"]))
    assert (r["added"], r["new_problems"], r["golden_verified"], r["golden_total"]) == (2, 1, 2, 2)
    r = _json(runner.invoke(app, ["ingest", str(a), "--set", "two", "--json"]))
    assert (r["added"], r["present"], r["new_problems"]) == (1, 1, 0)
    assert db["problems"].count == 3 and db["set_problems"].count == 5
    assert problem_id("What is 1 + 1?") == problem_id(" What  is 1 +\n1? ")
    assert db["problems"].get(problem_id("What is 1 + 1?"))["text"] == "What is 1 + 1?"  # first text kept


def test_template_and_explicit_flags_override_detection(tmp_path, runner, db):
    rows = [{"Intro": "Ann has 3 apples.", "Ask": "How many after 2 more?", "answer": "wrong", "final": 5.0,
             "work": "3 + 2 = 5", "question": "not this"}]
    path = _write_jsonl(tmp_path / "t.jsonl", rows)
    r = _json(runner.invoke(app, ["ingest", str(path), "--set", "t", "--problem", "{Intro} {Ask}",
                                  "--answer", "final", "--solution", "work", "--json"]))
    assert r["mapping"]["problem"] == "{Intro} {Ask}" and r["golden_total"] == 1
    p = next(db["problems"].rows)
    assert (p["text"], p["answer"]) == ("Ann has 3 apples. How many after 2 more?", "5")
    assert json.loads(p["metadata_json"]) == {"answer": "wrong", "question": "not this"}
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "u", "--problem", "{Intro} {Nope}"]),
           "--problem 'Nope' is not a field", "fields: Intro, Ask")
    _fails(runner.invoke(app, ["ingest", str(path), "--set", "u", "--answer", "Final"]),
           "--answer 'Final' is not a field")


def test_unsure_detection_goes_on_without_a_terminal(tmp_path, runner, db):
    path = _write_jsonl(tmp_path / "w.jsonl", [{"input": "What is 3 + 4?", "target": 7.0}])
    out = runner.invoke(app, ["ingest", str(path), "--set", "w"])
    assert out.exit_code == 0 and "note: unsure" in out.stderr and "problem=input" in out.stderr
    assert next(db["problems"].rows)["answer"] == "7"
    out = runner.invoke(app, ["ingest", str(path), "--set", "w2", "--yes"])
    assert out.exit_code == 0 and "note: unsure" not in out.output


@pytest.mark.parametrize("reply, written", [("y\n", True), ("n\n", False)])
def test_unsure_detection_asks_on_a_terminal(reply, written, tmp_path, runner, monkeypatch, gcpo_home):
    from gcpo_cli import cmd_data

    monkeypatch.setattr(cmd_data, "_interactive", lambda: True)
    path = _write_jsonl(tmp_path / "w.jsonl", [{"input": "What is 3 + 4?", "target": 7.0}])
    out = runner.invoke(app, ["ingest", str(path), "--set", "w"], input=reply)
    assert "Sample row" in out.output and "What is 3 + 4?" in out.output and "Use this mapping?" in out.output
    if written:
        assert out.exit_code == 0 and "rows read" in out.output
    else:
        assert out.exit_code == 1 and "cancelled, nothing was written" in " ".join(out.output.split())
        _nothing_written(gcpo_home / "gcpo.db")


def test_summary_table_fits_80_columns_and_lists_mismatches(tmp_path, runner):
    rows = [{"problem": f"Problem number {i}?", "answer": str(i),
             "solution": f"A very long worked solution {'blah ' * 30} so \\boxed{{{i + 1}}}"} for i in range(25)]
    out = runner.invoke(app, ["ingest", str(_write_jsonl(tmp_path / "m.jsonl", rows)), "--set", "m"])
    assert out.exit_code == 0, out.output
    assert "did not verify" in out.output and "0/25" in out.output and "5 more (--json lists them all)" in out.output
    assert all(len(line) <= 80 for line in out.output.splitlines())


# ------------------------------------------------------------------------- synthetic and the Python API


def test_synthetic_arithmetic(runner, db):
    args = ["ingest", "synthetic:arithmetic", "--set", "arith", "--count", "20", "--seed", "1", "--levels", "1-2"]
    r = _json(runner.invoke(app, args + ["--json"]))
    assert (r["added"], r["golden_verified"], r["golden_total"]) == (20, 20, 20)
    assert {json.loads(p["metadata_json"])["level"] for p in db["problems"].rows} == {1, 2}
    assert _json(runner.invoke(app, args + ["--json"]))["noop"]
    _fails(runner.invoke(app, ["ingest", "synthetic:geometry", "--set", "g"]), "unknown synthetic set")
    _fails(runner.invoke(app, ["ingest", "synthetic:arithmetic", "--set", "g", "--levels", "9"]), "levels must be")


def test_python_api_for_the_trainer(db, tmp_path):
    name = ensure_synthetic_set(db, "demo", count=10, seed=0, levels="2")
    assert name == "demo" and ensure_synthetic_set(db, "demo", count=10, seed=0, levels=[2]) == "demo"
    assert db["set_problems"].count == 10 and db["ingests"].count == 1
    with pytest.raises(GcpoError, match="already holds other problems"):
        ensure_synthetic_set(db, "demo", count=11, seed=0, levels="2")
    assert ensure_synthetic_set(db, count=5, seed=3, levels="1") == "arithmetic-count5-seed3-levels1"

    rows = [{"question": "What is 6 * 7?", "answer": 42}, {"question": "What is 6 + 7?", "answer": "13"}]
    r = ingest_rows(db, rows, "mine", source="trainer")
    assert (r.added, r.rejected, r.noop) == (2, 0, False)
    assert ingest_rows(db, rows, "mine", source="trainer").noop
    with pytest.raises(GcpoError, match="row 2: field 'answer' is null"):
        ingest_rows(db, [rows[0], {"question": "What is 1 - 1?", "answer": None}], "other")
    assert db["problem_sets"].count == 3  # demo, arithmetic-..., mine: "other" was never created
    path = _write_jsonl(tmp_path / "g.jsonl", GOOD)
    assert ingest_source(db, str(path), "from-file").added == 2
