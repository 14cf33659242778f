"""Ingest problem sets: read a source, map its fields (fields.py), write in one transaction.

Readers: JSONL and JSON arrays are parsed with `json` here, because datasets' JSON reader coerces
mixed-type columns ("007" and 2.5 in one column become numbers, a null beside strings can fail)
and cannot say which line was bad. CSV, Parquet, `save_to_disk` folders and `hf:ORG/NAME` go
through `datasets`. `synthetic:arithmetic` comes from synthetic.py.

Identity (content hashes, as simonw/llm does): a problem's id is the sha256 of its
whitespace-normalised text, so the same problem in two sets is stored once; a golden answer's id
hashes (problem, text); an ingest's fingerprint (source content + field overrides) turns
re-ingesting the same source into the same set into a no-op.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import store, synthetic
from .answers import Grader, _local_verdict
from .errors import GcpoError
from .fields import Mapping, Record, build_records, detect_mapping

SYNTHETIC_KINDS = ("arithmetic",)


def _sha(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- read


@dataclass
class Loaded:
    """Rows read from a source, before any field is interpreted."""

    source: str  # canonical source, stored with the ingest
    label: str  # how messages name the source (the path as given, the hub id)
    rows: list[dict]
    where: list[str]  # "line 12" (text formats) or "row 3" (tables), one per row
    fingerprint: str  # sha256 of the content
    bad: list[tuple[str, str]] = field(default_factory=list)  # unparseable rows: (where, why)


def load_source(source: str, *, split: str | None = None, subset: str | None = None,
                count: int = 200, seed: int = 0, levels: str | list[int] = "1-5") -> Loaded:
    """Read SOURCE (a file, a datasets folder, hf:ORG/NAME, synthetic:KIND) into plain rows."""
    if source.startswith("synthetic:"):
        return _load_synthetic(source, count, seed, levels)
    if source.startswith("hf:"):
        return _load_hub(source[3:], split, subset)
    path = Path(source).expanduser()
    if subset:
        raise GcpoError("--subset applies to hub datasets (hf:ORG/NAME) only")
    if path.is_dir():
        return _load_folder(path, source, split)
    if split:
        raise GcpoError("--split applies to hub datasets and datasets folders, not to a single file")
    if not path.exists():
        raise GcpoError(f"{source}: file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GcpoError(f"{source}: cannot read the file ({e.strerror})")
    src = str(path.resolve())
    ext = path.suffix.lower()
    if ext not in (".jsonl", ".ndjson", ".json", ".csv", ".parquet"):
        raise GcpoError(f"{source}: unknown format {ext or '(no extension)'!r}; expected .jsonl, .json, "
                         ".csv, .parquet, a folder saved by datasets, hf:ORG/NAME or synthetic:arithmetic")
    if ext == ".parquet":
        rows = _read_with_datasets("parquet", path, source)
        return Loaded(src, source, rows, [f"row {i + 1}" for i in range(len(rows))], _sha(data))
    text = _decode(data, source)
    if not text.strip():
        raise GcpoError(f"{source}: the file is empty")
    if ext == ".csv":
        return _load_csv(path, source, src, text, data)
    if ext == ".json" and text.lstrip().startswith("["):
        rows, where = _parse_json_array(text, source)
        return Loaded(src, source, rows, where, _sha(data))
    if ext == ".json" and text.lstrip().startswith("{"):
        try:  # one (maybe pretty-printed) object is one row; otherwise these are JSON lines
            obj = json.loads(text)
            return Loaded(src, source, [obj], ["line 1"], _sha(data))
        except json.JSONDecodeError:
            pass
    return _parse_jsonl(text, source, src, data)


def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise GcpoError(f"{label}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column "
                         f"{col}); re-save the file as UTF-8")


def _parse_jsonl(text: str, label: str, src: str, data: bytes) -> Loaded:
    rows, where, bad = [], [], []
    # split("\n"), not splitlines(): U+2028 and friends may sit raw inside JSON strings.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append((f"line {n}", f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            bad.append((f"line {n}", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        rows.append(obj)
        where.append(f"line {n}")
    return Loaded(src, label, rows, where, _sha(data), bad)


def _parse_json_array(text: str, label: str) -> tuple[list[dict], list[str]]:
    """Parse a JSON array element by element so that each row knows the line it starts on."""
    dec = json.JSONDecoder()
    rows, where = [], []
    ws = re.compile(r"\s*")
    pos, line, counted = ws.match(text, 0).end() + 1, 1, 0

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    try:
        pos = ws.match(text, pos).end()
        while pos < len(text) and text[pos] != "]":
            start = pos
            obj, pos = dec.raw_decode(text, pos)
            if not isinstance(obj, dict):
                raise GcpoError(f"{label}: line {line_at(start)}: expected a JSON object, got "
                                 f"{type(obj).__name__}")
            rows.append(obj)
            where.append(f"line {line_at(start)}")
            pos = ws.match(text, pos).end()
            if pos < len(text) and text[pos] == ",":
                pos = ws.match(text, pos + 1).end()
            elif pos >= len(text) or text[pos] != "]":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        if pos >= len(text) or text[ws.match(text, pos + 1).end():]:
            raise json.JSONDecodeError("Expecting ']' at the end of the array", text, min(pos, len(text) - 1))
    except json.JSONDecodeError as e:
        raise GcpoError(f"{label}: line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})")
    if not rows:
        raise GcpoError(f"{label}: the JSON array is empty")
    return rows, where


def _load_csv(path: Path, label: str, src: str, text: str, data: bytes) -> Loaded:
    # The line each record starts on, for messages: quoted fields may span lines, so the csv
    # module counts them (pandas, under datasets, reads the values).
    header, starts, prev_end = None, [], 0
    reader = csv.reader(io.StringIO(text))
    try:
        for rec in reader:
            if rec and header is None:
                header = rec
            elif rec:  # blank lines are skipped, as pandas does
                starts.append(prev_end + 1)
            prev_end = reader.line_num
    except csv.Error as e:
        raise GcpoError(f"{label}: line {reader.line_num}: not valid CSV ({e})")
    if not header or not any(h.strip() for h in header):
        raise GcpoError(f"{label}: line 1: no header row")
    if not starts:
        raise GcpoError(f"{label}: no rows after the header")
    import datasets

    # Every column as text: pandas would read "007" as 7 and an integer column with a gap as floats.
    features = datasets.Features({h: datasets.Value("string") for h in header})
    rows = _read_with_datasets("csv", path, label, features=features)
    where = ([f"line {s}" for s in starts] if len(starts) == len(rows)
             else [f"row {i + 1}" for i in range(len(rows))])
    return Loaded(src, label, rows, where, _sha(data))


def _read_with_datasets(kind: str, path: Path, label: str, **kwargs) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()
    # A throw-away cache: local files need no cache, and the user's HF cache stays clean.
    # datasets logs its own ERROR line before raising; our one-line message says it better.
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="gcpo-ingest-") as cache:
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache,
                                       keep_in_memory=True, **kwargs)
            return ds.to_list()
        except Exception as e:  # pyarrow/pandas raise many types; all mean "cannot read this"
            raise GcpoError(f"{label}: cannot read as {kind.upper()}: {_first_line(e)}")
        finally:
            datasets.logging.set_verbosity(verbosity)


def _first_line(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:300]


def _pick_split(obj, split: str | None, label: str):
    import datasets

    if not isinstance(obj, datasets.DatasetDict):
        if split:
            raise GcpoError(f"{label}: holds one dataset with no splits; leave out --split")
        return obj
    if split is None and len(obj) == 1:
        split = next(iter(obj))
    if split not in obj:
        raise GcpoError(f"{label}: has splits {', '.join(obj)}; pass --split with one of them"
                         if split is None else f"{label}: no split {split!r} (splits: {', '.join(obj)})")
    return obj[split]


def _load_folder(path: Path, label: str, split: str | None) -> Loaded:
    import datasets

    try:
        obj = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as e:
        raise GcpoError(f"{label}: not a folder saved by datasets (save_to_disk): {_first_line(e)}")
    ds = _pick_split(obj, split, label)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
    rows = ds.to_list()
    src = str(path.resolve()) + (f":{split}" if split else "")
    where = [f"row {i + 1}" for i in range(len(rows))]
    return Loaded(src, label, rows, where, _sha(h.hexdigest(), split or ""))


def _load_hub(name: str, split: str | None, subset: str | None) -> Loaded:
    import datasets

    label = f"hf:{name}"
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise GcpoError(f"{label}: not a hub dataset id; expected hf:ORG/NAME")
    datasets.disable_progress_bars()
    try:
        obj = datasets.load_dataset(name, subset, split=split)
    except Exception as e:  # offline, unknown id, unknown subset/split: all end the same way
        raise GcpoError(f"{label}: cannot load from the hub: {_first_line(e)}")
    ds = _pick_split(obj, split, label)
    rows = ds.to_list()
    src = f"hf:{name}" + (f"/{subset}" if subset else "") + (f":{split}" if split else "")
    fp = _sha(src, getattr(ds, "_fingerprint", "") or dumps(rows))
    return Loaded(src, label, rows, [f"row {i + 1}" for i in range(len(rows))], fp)


def _load_synthetic(source: str, count: int, seed: int, levels) -> Loaded:
    kind = source.split(":", 1)[1]
    if kind not in SYNTHETIC_KINDS:
        raise GcpoError(f"{source}: unknown synthetic set; known: "
                         + ", ".join(f"synthetic:{k}" for k in SYNTHETIC_KINDS))
    try:
        lv = synthetic.parse_levels(levels) if isinstance(levels, str) else list(levels)
        if count < 1:
            raise ValueError(f"--count must be at least 1, got {count}")
        rows = synthetic.arithmetic(count, seed, lv)
    except ValueError as e:
        raise GcpoError(f"{source}: {e}")
    src = f"synthetic:{kind}?count={count}&seed={seed}&levels={','.join(map(str, lv))}"
    return Loaded(src, source, rows, [f"row {i + 1}" for i in range(len(rows))], _sha(src))


# ------------------------------------------------------------------------------------------ write


@dataclass
class IngestReport:
    set_name: str
    source: str
    mapping: dict
    rows_read: int = 0
    added: int = 0  # rows that became members of the set
    new_problems: int = 0  # of those, problems the database did not hold before
    present: int = 0  # rows whose problem was already in the set (or earlier in the file)
    rejected: int = 0
    golden_total: int = 0
    golden_verified: int = 0
    noop: bool = False
    seconds: float = 0.0
    mismatches: list[dict] = field(default_factory=list)  # golden final answer != answer
    rejects: list[dict] = field(default_factory=list)  # {where, reason}
    conflicts: list[dict] = field(default_factory=list)  # same problem, another answer: kept first

    def to_dict(self) -> dict:
        return asdict(self)


def detect(loaded: Loaded, *, problem: str | None = None, solution: str | None = None,
           answer: str | None = None, id: str | None = None) -> Mapping:
    """The field mapping for loaded rows (explicit names win); GcpoError when nothing can be mapped."""
    if not loaded.rows:
        if loaded.bad:
            w, why = loaded.bad[0]
            raise GcpoError(f"{loaded.label}: {w}: {why}; no readable rows")
        raise GcpoError(f"{loaded.label}: no rows")
    return detect_mapping(loaded.rows, problem=problem, solution=solution, answer=answer, id=id,
                          label=loaded.label)


def ingest_rows(db, rows: list[dict], set_name: str, *, source: str = "rows",
                problem: str | None = None, solution: str | None = None, answer: str | None = None,
                id: str | None = None, skip_invalid: bool = False,
                grader: Grader | None = None) -> IngestReport:
    """Ingest in-memory rows (dicts) into SET_NAME; the trainer's entry point for its own data.

    Fields are detected as for files unless the overrides name them. The same rows into the same
    set again are a no-op. Raises GcpoError (nothing written) on invalid rows unless `skip_invalid`."""
    rows = list(rows)
    loaded = Loaded(source, source, rows, [f"row {i + 1}" for i in range(len(rows))], _sha(store.dumps(rows)))
    return ingest_loaded(db, loaded, set_name, problem=problem, solution=solution, answer=answer,
                         id=id, skip_invalid=skip_invalid, grader=grader)


def ingest_loaded(db, loaded: Loaded, set_name: str, *, mapping: Mapping | None = None,
                  problem: str | None = None, solution: str | None = None,
                  answer: str | None = None, id: str | None = None, skip_invalid: bool = False,
                  grader: Grader | None = None) -> IngestReport:
    """Validate, grade and write rows from load_source(); `mapping` skips detection (the CLI has
    already shown it). The overrides still go into the no-op fingerprint."""
    t0 = time.perf_counter()
    store.require_set_name(set_name)
    mapping = mapping or detect(loaded, problem=problem, solution=solution, answer=answer, id=id)
    overrides = store.dumps({"problem": problem, "solution": solution, "answer": answer, "id": id})
    fingerprint = _sha(loaded.fingerprint, overrides)
    report = IngestReport(set_name, loaded.source, mapping.describe(),
                          rows_read=len(loaded.rows) + len(loaded.bad))
    prior = store.prior_ingest(db, set_name, fingerprint)
    if prior:
        report.noop, report.rejected = True, prior["rejected"]
        report.present = prior["added"] + prior["present"]
        report.seconds = time.perf_counter() - t0
        return report

    records, rejects = build_records(loaded.rows, loaded.where, mapping)
    rejects = sorted(loaded.bad + rejects, key=lambda r: _where_key(r[0]))
    if rejects and not skip_invalid:
        w, why = rejects[0]
        n = len(rejects) - 1
        more = f" (and {n} more invalid row{'s' * (n > 1)})" if n else ""
        raise GcpoError(f"{loaded.label}: {w}: {why}{more}; fix the file or pass --skip-invalid to skip "
                         "invalid rows; nothing was written")
    report.rejected = len(rejects)
    report.rejects = [{"where": w, "reason": why} for w, why in rejects]
    if not records:
        raise GcpoError(f"{loaded.label}: every row is invalid; nothing was written")
    _write(db, set_name, loaded.source, fingerprint, records, report, grader)
    report.seconds = time.perf_counter() - t0
    return report


def ingest_source(db, source: str, set_name: str, *, split: str | None = None,
                  subset: str | None = None, problem: str | None = None,
                  solution: str | None = None, answer: str | None = None, id: str | None = None,
                  count: int = 200, seed: int = 0, levels: str | list[int] = "1-5",
                  skip_invalid: bool = False, grader: Grader | None = None) -> IngestReport:
    """Read SOURCE (file, datasets folder, hf:ORG/NAME, synthetic:arithmetic) into SET_NAME."""
    loaded = load_source(source, split=split, subset=subset, count=count, seed=seed, levels=levels)
    return ingest_loaded(db, loaded, set_name, problem=problem, solution=solution, answer=answer,
                         id=id, skip_invalid=skip_invalid, grader=grader)


def ensure_synthetic_set(db, name: str | None = None, count: int = 200, seed: int = 0,
                         levels: str | list[int] = "1-5", grader: Grader | None = None) -> str:
    """Make sure a synthetic:arithmetic set with exactly these parameters exists; return its name.

    Idempotent. A set of that name holding anything else is an error, not a silent mix."""
    loaded = _load_synthetic("synthetic:arithmetic", count, seed, levels)
    name = name or "arithmetic-" + loaded.source.split("?", 1)[1].replace("&", "-").replace("=", "")
    sources = set(store.set_sources(db, name))
    if sources:
        if sources != {loaded.source}:
            held = ", ".join(sorted(sources)) or "unknown"
            raise GcpoError(f"set {name!r} already holds other problems ({held}); choose another name")
        return name
    ingest_loaded(db, loaded, name, grader=grader)
    return name


def _where_key(w: str) -> tuple[int, str]:
    m = re.search(r"\d+", w)
    return (int(m.group()) if m else 0, w)


def _write(db, set_name: str, source: str, fingerprint: str, records: list[Record],
           report: IngestReport, grader: Grader | None) -> None:
    stored = store.stored_answers(db, {r.id for r in records})
    # First occurrence wins, both within the source and against what the database holds; a later
    # copy with another answer is reported (after math-verify: "0.5" vs "1/2" is no conflict).
    unique: dict[str, Record] = {}
    differ: list[tuple[Record, str]] = []
    for r in records:
        kept = stored.get(r.id) or (unique[r.id].answer if r.id in unique else None)
        if kept is not None and _local_verdict(kept, r.answer) is not True:
            differ.append((r, kept))
        unique.setdefault(r.id, r)
    golden = [r for r in unique.values() if r.solution]
    pairs = [(stored.get(r.id, r.answer), r.final) for r in golden]
    # Grade before the transaction opens: math-verify may take seconds, the write lock must not.
    own = grader is None
    grader = grader or Grader()
    try:
        verdicts = grader.grade(pairs + [(kept, r.answer) for r, kept in differ])
    finally:
        if own:
            grader.close()
    verdicts, same = verdicts[: len(pairs)], verdicts[len(pairs):]
    report.conflicts = [{"where": r.where, "id": r.id, "kept": kept, "ignored": r.answer}
                        for (r, kept), ok in zip(differ, same) if not ok]
    report.golden_total, report.golden_verified = len(golden), sum(verdicts)
    report.mismatches = [{"where": r.where, "id": r.id, "answer": a, "golden": r.final}
                         for r, (a, _), ok in zip(golden, pairs, verdicts) if not ok]
    problems = [dict(id=r.id, text=r.text, answer=r.answer, metadata=r.metadata, source_id=r.source_id,
                     known=r.id in stored) for r in unique.values()]
    golden_rows = [dict(id=_sha(r.id, r.solution)[:16], problem_id=r.id, text=r.solution, final_answer=r.final,
                        source=f"dataset:{source}", verified=int(ok)) for r, ok in zip(golden, verdicts)]
    counts = dict(records=len(records), rows_read=report.rows_read, rejected=report.rejected,
                  golden_verified=report.golden_verified, golden_total=report.golden_total)
    written = store.write_ingest(db, set_name, source, fingerprint, problems, golden_rows, counts)
    report.added, report.present, report.new_problems = written["added"], written["present"], written["new_problems"]
