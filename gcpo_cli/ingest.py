"""Ingest problem sets: read a source, map its fields (fields.py), write in one transaction.

Readers: JSONL (and JSON lines in a .json file) is streamed. It is read line by line twice: once
to hash it (the no-op fingerprint), learn every field name and keep a sample of rows for
detection; once to turn each line into a record as it is read. What is kept is what the write
needs (each new problem once, golden answers, conflicting answers), never the file, its text or
its parsed rows; the file is checked to be unchanged between the two reads. JSON arrays and CSV
are read whole and parsed here (`json`, and `csv` in strict mode, so that any error names its
line); datasets' JSON reader coerces mixed-type columns ("007" and 2.5 in one column become
numbers) and pandas' CSV reader merges rows after a stray quote, shifts columns and reads "NA" as
missing. Parquet, `save_to_disk` folders and `hf:ORG/NAME` go through `datasets`.
`synthetic:arithmetic` comes from synthetic.py. However read, the write is one transaction:
an invalid row writes nothing unless --skip-invalid, and every message names the line (or row).

Limits (env var, or the `max_field_bytes` / `max_input_bytes` arguments): one field at most
GCPO_MAX_FIELD_BYTES of UTF-8 (default 1 MiB; a longer one rejects its row); one JSONL line at
most ROW_FIELDS (16) times that (a longer one is rejected unread: no 1 GB line in memory); a file
or folder at most GCPO_MAX_INPUT_BYTES (default 2 GiB). Sizes are bytes, or take K/M/G (binary).

Refused, naming the line (rows: skipped and reported with --skip-invalid):
- CSV: a quote that is never closed or is followed by text (strict reader: the error names the
  line its record starts on), a column name twice in the header (file error), a row whose field
  count is not the header's. Only an empty cell is missing; "NA", "null", "007" stay text.
- JSON: a trailing comma in an array (file error), numbers Python cannot hold (over 4,300
  digits), nesting deeper than the parser's recursion limit.
- Any field: a lone surrogate (SQLite cannot store it), binary data that is not UTF-8 (binary
  that is UTF-8, as Parquet often stores text, is decoded), more than the field limit.
- Answers: inf and nan (as numbers or as text; an infinite answer is written \\infty), longer than
  the grader reads (answers.MAX_ANSWER_CHARS). An integer-valued number beyond 2**53 keeps the
  text it was written with: `1e300` is stored as "1e300" (a Parquet float as Python writes it,
  "1e+300"), never as 301 digits that are not the data's; 27.0 is still "27".
- Chat special tokens (`<|im_end|>`, `<|eot_id|>`, `<|start_header_id|>`, DeepSeek's
  `<｜end▁of▁sentence｜>`, `</s>`, `[INST]`, `<<SYS>>`, `<start_of_turn>`...; fields.chat_token)
  in the problem text, the solution or the answer. A tokenizer turns these strings into real
  special-token ids, so a row holding them could close the user's turn in a prompt and write the
  assistant's (or a golden answer could end its own turn early). The choice is to refuse such
  rows here rather than tokenise around them: the database is shared by every model, each with
  its own special tokens, so only a check on the data keeps every prompt safe for every model,
  and the data's author sees the row to fix. No real problem in ../shared/data holds one; a bare
  `<|x|>` (absolute values) is not matched. The tokenising side (special-token strings kept as
  text) is the other layer, for models whose tokens are not in the list.

Identity (content hashes, as simonw/llm does): a problem's id is the sha256 of its
whitespace-normalised text, so the same problem in two sets is stored once; a golden answer's id
hashes (problem, text); an ingest's fingerprint (source content + field overrides + IDENTITY)
turns re-ingesting the same source into the same set into a no-op.

Every source row is a problem (issue 13): a row whose text another problem already has (in the
database, or earlier in the source) is that problem only when its answer is the same (the same
text, or equal by math-verify: "0.5" and "1/2"); with another answer (an exercise set whose
figure or context differs) it is a problem of its own, with `fields.variant_id(text, answer)`,
listed under `variants` in the report. A repeat within the source (same text, same answer) is a
problem too, `fields.repeat_id(id, n)`, so a set holds as many problems as the source has rows
(benchmarks count repeated rows). Old ids never change.

Worked solutions held as a list of strings (OlympiadBench) give their first non-empty item as
the golden answer (counted in `solution_lists`); a list answer is fields._listed_answer's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Mapping as MappingABC
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from . import store, synthetic
from .answers import local_verdict
from .errors import GcpoError
from .fields import (MAX_FIELD_BYTES, SAMPLE, Mapping, Record, build_record, detect_mapping, used_fields,
                     repeat_id, variant_id)
from .grader import Grader

SYNTHETIC_KINDS = ("arithmetic",)
FIELD_ENV, INPUT_ENV = "GCPO_MAX_FIELD_BYTES", "GCPO_MAX_INPUT_BYTES"
MAX_INPUT_BYTES = 2 * 2**30
ROW_FIELDS = 16  # a JSONL line may hold this many fields' worth of bytes
CHUNK = 2000  # records looked up in the database at a time
SAMPLE_BYTES = 32 * 2**20  # a streamed file's detection sample: fields.SAMPLE rows, fewer once past this size
_BOM = b"\xef\xbb\xbf"
# Part of every ingest's fingerprint: the rules that turn rows into problems. When they change, a
# source ingested under the old ones is read once more (adding what they lost, e.g. rows merged
# into another problem of the same text, golden answers from list-valued solutions) and is then a
# no-op again; what was stored keeps its ids.
IDENTITY = "rows-are-problems/2"


def _sha(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        # surrogatepass: in-memory rows may hold a lone surrogate (rejected later, with its row);
        # valid text encodes exactly as before, so fingerprints do not change.
        h.update(p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


_SIZE = re.compile(r"\s*(\d{1,19})\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.I)


def _limit(value: int | None, env: str, default: int) -> int:
    """A size limit: the argument, else the environment variable, else the default."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GcpoError(f"{env.lower().removeprefix('gcpo_').replace('_', '-')} must be a positive number of "
                            f"bytes, got {value!r}")
        return value
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    m = _SIZE.fullmatch(raw)
    n = int(m.group(1)) * 1024 ** ("kmgt".index(m.group(2).lower()) + 1 if m.group(2) else 0) if m else 0
    if n < 1:
        raise GcpoError(f"{env}={raw!r} is not a size: give a positive number of bytes, e.g. 1048576 or 1M")
    return n


def limits(max_field_bytes: int | None = None, max_input_bytes: int | None = None) -> tuple[int, int]:
    """(field limit, input limit) in bytes: the arguments, else GCPO_MAX_FIELD_BYTES and
    GCPO_MAX_INPUT_BYTES, else 1 MiB and 2 GiB. GcpoError for a value that is not a size."""
    return (_limit(max_field_bytes, FIELD_ENV, MAX_FIELD_BYTES), _limit(max_input_bytes, INPUT_ENV, MAX_INPUT_BYTES))


def _too_big(label: str, size: int, cap: int) -> GcpoError:
    return GcpoError(f"{label}: the input is {size:,} bytes, over the {cap:,}-byte input limit "
                     f"({INPUT_ENV}); nothing was written")


# ----------------------------------------------------------------------------------------- read


@dataclass
class Loaded:
    """Rows read from a source, before any field is interpreted."""

    source: str  # canonical source, stored with the ingest
    label: str  # how messages name the source (the path as given, the hub id)
    rows: list[dict]  # every row; for a streamed file, its first fields.SAMPLE readable rows
    where: list[str]  # "line 12" (text formats) or "row 3" (tables), one per row
    fingerprint: str  # sha256 of the content
    bad: list[tuple[str, str]] = field(default_factory=list)  # unparseable rows: (where, why); streamed: the first
    columns: list[str] | None = None  # every field name of every row, in order (None: those of `rows`)
    count: int | None = None  # rows read, readable or not (None: len(rows) + len(bad))
    max_field_bytes: int = MAX_FIELD_BYTES
    stream: Callable[[], Iterator[tuple[str, dict | None, str | None]]] | None = field(default=None, repr=False)

    @property
    def rows_read(self) -> int:
        return self.count if self.count is not None else len(self.rows) + len(self.bad)

    def items(self) -> Iterator[tuple[str, dict | None, str | None]]:
        """(where, row, None) for each readable row and (where, None, why) for each unreadable
        one, in source order. A streamed file is read again (GcpoError if it has changed)."""
        if self.stream is not None:
            yield from self.stream()
            return
        merged = [(w, r, None) for r, w in zip(self.rows, self.where)] + [(w, None, why) for w, why in self.bad]
        if self.bad:
            merged.sort(key=lambda item: _where_key(item[0]))
        yield from merged


def load_source(source: str, *, split: str | None = None, subset: str | None = None,
                count: int = 200, seed: int = 0, levels: str | list[int] = "1-5",
                max_field_bytes: int | None = None, max_input_bytes: int | None = None) -> Loaded:
    """Read SOURCE (a file, a datasets folder, hf:ORG/NAME, synthetic:KIND) into plain rows (a
    JSONL file: a sample of them, and a way to stream them all). The limits default to
    GCPO_MAX_FIELD_BYTES / GCPO_MAX_INPUT_BYTES (see the module docstring)."""
    field_cap, input_cap = limits(max_field_bytes, max_input_bytes)
    loaded = _load(source, split, subset, count, seed, levels, field_cap, input_cap)
    loaded.max_field_bytes = field_cap
    return loaded


def _load(source: str, split, subset, count, seed, levels, field_cap: int, input_cap: int) -> Loaded:
    if source.startswith("synthetic:"):
        return _load_synthetic(source, count, seed, levels)
    if source.startswith("hf:"):
        return _load_hub(source[3:], split, subset)
    path = Path(source).expanduser()
    if subset:
        raise GcpoError("--subset applies to hub datasets (hf:ORG/NAME) only")
    if path.is_dir():
        return _load_folder(path, source, split, input_cap)
    if split:
        raise GcpoError("--split applies to hub datasets and datasets folders, not to a single file")
    if not path.exists():
        raise GcpoError(f"{source}: file not found")
    src = str(path.resolve())
    ext = path.suffix.lower()
    if ext not in (".jsonl", ".ndjson", ".json", ".csv", ".parquet"):
        raise GcpoError(f"{source}: unknown format {ext or '(no extension)'!r}; expected .jsonl, .json, "
                         ".csv, .parquet, a folder saved by datasets, hf:ORG/NAME or synthetic:arithmetic")
    try:
        if path.is_file() and path.stat().st_size > input_cap:
            raise _too_big(source, path.stat().st_size, input_cap)
        if not path.is_file():  # a pipe or a device: it cannot be read twice, so read it once
            return _load_bytes(_read_capped(path, source, input_cap), path, source, src, ext, field_cap, input_cap)
        if ext == ".parquet":
            rows = _bytes_as_text(_read_with_datasets("parquet", path, source))
            return Loaded(src, source, rows, [f"row {i + 1}" for i in range(len(rows))], _file_sha(path))
        if ext in (".jsonl", ".ndjson") or (ext == ".json" and _jsonl_shaped(path, field_cap)):
            return _load_jsonl(partial(open, path, "rb"), source, src, field_cap, input_cap)
        return _load_bytes(path.read_bytes(), path, source, src, ext, field_cap, input_cap)
    except OSError as e:
        raise GcpoError(f"{source}: cannot read the file ({e.strerror or e})")


def _load_bytes(data: bytes, path: Path, label: str, src: str, ext: str, field_cap: int, input_cap: int) -> Loaded:
    """A file already in memory: CSV, a JSON array or object, or JSONL that could not be streamed."""
    if len(data) > input_cap:
        raise _too_big(label, len(data), input_cap)
    if ext == ".parquet":
        with tempfile.TemporaryDirectory(prefix="gcpo-ingest-") as d:
            copy = Path(d) / path.name
            copy.write_bytes(data)
            rows = _bytes_as_text(_read_with_datasets("parquet", copy, label))
        return Loaded(src, label, rows, [f"row {i + 1}" for i in range(len(rows))], _sha(data))
    text = _decode(data, label)
    if not text.strip():
        raise GcpoError(f"{label}: the file is empty")
    if ext == ".csv":
        return _load_csv(label, src, text, data, field_cap)
    if ext == ".json" and text.lstrip().startswith("["):
        rows, where = _parse_json_array(text, label)
        return Loaded(src, label, rows, where, _sha(data))
    if ext == ".json" and text.lstrip().startswith("{"):
        try:  # one (maybe pretty-printed) object is one row; otherwise these are JSON lines
            obj = _DECODER.decode(text)
            if isinstance(obj, dict):
                return Loaded(src, label, [obj], ["line 1"], _sha(data))
        except (ValueError, RecursionError):
            pass
    return _load_jsonl(partial(io.BytesIO, data), label, src, field_cap, input_cap)


def _read_capped(path: Path, label: str, cap: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise _too_big(label, len(data), cap)
    return data


def _file_sha(path: Path) -> str:
    """_sha(the file's bytes), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(partial(f.read, 1 << 20), b""):
            h.update(chunk)
    h.update(b"\0")
    return h.hexdigest()


def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise GcpoError(f"{label}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column "
                         f"{col}); re-save the file as UTF-8")


class _JsonFloat(float):
    """A JSON number that Python reads as a float, with the text it was written as (`1e300`)."""

    __slots__ = ("literal",)


def _json_float(text: str) -> float:
    if "e" not in text and "E" not in text and len(text) < 16:
        return float(text)  # exact enough as a float; only long or exponent forms keep their text
    f = _JsonFloat(text)
    f.literal = text
    return f


_DECODER = json.JSONDecoder(parse_float=_json_float)


def _json_error(e: BaseException) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at column {e.colno})"
    if isinstance(e, RecursionError):
        return "not valid JSON for Python (nested too deeply)"
    if "digits" in str(e):
        return "not valid JSON for Python (a number of more than 4,300 digits)"
    return f"not valid JSON ({_first_line(e)})"


def _type_name(obj) -> str:
    return "float" if isinstance(obj, float) else type(obj).__name__


def _parse_line(text: str) -> tuple[dict | None, str | None]:
    """One JSONL line: (the object, None) or (None, why it is not a row)."""
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, a number too long for Python
        return None, _json_error(e)
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {_type_name(obj)}"
    return obj, None


class _Lines:
    """The non-blank lines of a JSONL file, decoded, with their numbers; hashes every byte it reads
    (`digest`, once exhausted: _sha of the content). A line longer than `row_cap` bytes is not
    read into memory: it comes back as (number, None, why). Past `input_cap` bytes, or at bytes
    that are not UTF-8, it stops with a GcpoError that names the line."""

    def __init__(self, opener, label: str, row_cap: int, input_cap: int):
        self.opener, self.label, self.row_cap, self.input_cap = opener, label, row_cap, input_cap
        self.digest: str | None = None

    def __iter__(self) -> Iterator[tuple[int, str | None, str | None]]:
        h, total, n = hashlib.sha256(), 0, 0
        with self.opener() as f:
            while True:
                raw = f.readline(self.row_cap + 1)
                if not raw:
                    break
                n += 1
                h.update(raw)
                total += len(raw)
                long = len(raw) > self.row_cap and not raw.endswith(b"\n")
                while long:  # the rest of the line, hashed and dropped
                    chunk = f.readline(1 << 20)
                    h.update(chunk)
                    total += len(chunk)
                    if not chunk or chunk.endswith(b"\n") or total > self.input_cap:
                        break
                if total > self.input_cap:
                    raise GcpoError(f"{self.label}: line {n}: the input passes the {self.input_cap:,}-byte input "
                                    f"limit ({INPUT_ENV}); nothing was written")
                if long:
                    yield n, None, (f"the line is longer than {self.row_cap:,} bytes ({ROW_FIELDS} times the "
                                    f"field limit, {FIELD_ENV}); not read")
                    continue
                skip = 3 if n == 1 and raw.startswith(_BOM) else 0
                try:
                    text = raw[skip:].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise GcpoError(f"{self.label}: line {n}: not UTF-8 text (byte 0x{raw[skip + e.start]:02x} at "
                                    f"column {skip + e.start + 1}); re-save the file as UTF-8")
                if text.strip():
                    yield n, text, None
        h.update(b"\0")
        self.digest = h.hexdigest()


def _jsonl_shaped(path: Path, field_cap: int) -> bool:
    """Is this .json file JSON lines (its first non-blank line a whole JSON value), not one
    array or one pretty-printed object? Only the first line is read."""
    with open(path, "rb") as f:
        for raw in iter(partial(f.readline, field_cap * ROW_FIELDS + 1), b""):
            text = raw.removeprefix(_BOM).decode("utf-8", "replace")
            if not text.strip():
                continue
            if text.lstrip().startswith("["):
                return False
            try:
                _DECODER.decode(text)
                return True
            except (ValueError, RecursionError):
                return False
    return False


def _load_jsonl(opener, label: str, src: str, field_cap: int, input_cap: int) -> Loaded:
    """First read of a JSONL file: the fingerprint, every field name, the first SAMPLE rows (fewer
    if they pass SAMPLE_BYTES), the number of lines and the first unreadable one. The rows
    themselves are streamed later."""
    lines = _Lines(opener, label, field_cap * ROW_FIELDS, input_cap)
    sample, where, bad, columns, n_lines, sampled = [], [], [], {}, 0, 0
    for n, text, why in lines:
        n_lines += 1
        row = None
        if why is None:
            row, why = _parse_line(text)
        if why is not None:
            if not bad:
                bad.append((f"line {n}", why))
            continue
        for k in row:
            if k not in columns:
                columns[k] = None
        if len(sample) < SAMPLE and sampled < SAMPLE_BYTES:
            sample.append(row)
            where.append(f"line {n}")
            sampled += len(text)
    if not n_lines:
        raise GcpoError(f"{label}: the file is empty")
    stream = partial(_stream_jsonl, opener, label, field_cap * ROW_FIELDS, input_cap, lines.digest)
    return Loaded(src, label, sample, where, lines.digest, bad, columns=list(columns), count=n_lines,
                  stream=stream)


def _stream_jsonl(opener, label: str, row_cap: int, input_cap: int, digest: str
                  ) -> Iterator[tuple[str, dict | None, str | None]]:
    lines = _Lines(opener, label, row_cap, input_cap)
    try:
        for n, text, why in lines:
            row = None
            if why is None:
                row, why = _parse_line(text)
            yield f"line {n}", row, why
    except OSError as e:
        raise GcpoError(f"{label}: cannot read the file ({e.strerror or e}); nothing was written")
    if lines.digest != digest:
        raise GcpoError(f"{label}: the file changed while it was being read; nothing was written")


def _parse_json_array(text: str, label: str) -> tuple[list[dict], list[str]]:
    """Parse a JSON array element by element so that each row knows the line it starts on."""
    rows, where = [], []
    ws = re.compile(r"\s*")
    pos, line, counted = ws.match(text, 0).end() + 1, 1, 0

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    start = pos
    try:
        pos = ws.match(text, pos).end()
        while pos < len(text) and text[pos] != "]":
            start = pos
            obj, pos = _DECODER.raw_decode(text, pos)
            if not isinstance(obj, dict):
                raise GcpoError(f"{label}: line {line_at(start)}: expected a JSON object, got {_type_name(obj)}")
            rows.append(obj)
            where.append(f"line {line_at(start)}")
            pos = ws.match(text, pos).end()
            if pos < len(text) and text[pos] == ",":
                comma, pos = pos, ws.match(text, pos + 1).end()
                if pos < len(text) and text[pos] == "]":
                    raise GcpoError(f"{label}: line {line_at(comma)}: not valid JSON (a trailing comma after the "
                                    "last element of the array)")
            elif pos >= len(text) or text[pos] != "]":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        if pos >= len(text) or text[ws.match(text, pos + 1).end():]:
            raise json.JSONDecodeError("Expecting ']' at the end of the array", text, min(pos, len(text) - 1))
    except json.JSONDecodeError as e:
        raise GcpoError(f"{label}: line {e.lineno}: {_json_error(e)}")
    except (ValueError, RecursionError) as e:
        raise GcpoError(f"{label}: line {line_at(start)}: {_json_error(e)}")
    if not rows:
        raise GcpoError(f"{label}: the JSON array is empty")
    return rows, where


def _load_csv(label: str, src: str, text: str, data: bytes, field_cap: int) -> Loaded:
    """A strict `csv` reader: a quote that is never closed, or text after a closing quote, is an
    error naming the line its record starts on (pandas would merge the rows that follow); a
    repeated column name is an error; a row with another field count than the header's is an
    unreadable row. Every value is text as written; an empty cell is missing (None)."""
    header, names, rows, where, bad = None, [], [], [], []
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, field_cap * ROW_FIELDS))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    prev_end = 0
    try:
        while True:
            start = prev_end + 1
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise GcpoError(_csv_error(label, e, start, reader.line_num))
            prev_end = reader.line_num
            if not any(f.strip() for f in rec):
                continue  # blank lines are skipped, as pandas does
            if header is None:
                header = rec
                names = _csv_names(rec, label, start)
                continue
            if len(rec) != len(names):
                n = len(rec)
                bad.append((f"line {start}", f"{n} field{'s' * (n != 1)}, the header has {len(names)}; a comma "
                                             "inside a value needs the value in quotes"))
                continue
            rows.append({h: (v if v != "" else None) for h, v in zip(names, rec)})
            where.append(f"line {start}")
    finally:
        csv.field_size_limit(old_limit)
    if header is None:
        raise GcpoError(f"{label}: line 1: no header row")
    if not rows and not bad:
        raise GcpoError(f"{label}: no rows after the header")
    return Loaded(src, label, rows, where, _sha(data), bad)


def _csv_names(header: list[str], label: str, line: int) -> list[str]:
    if not any(h.strip() for h in header):
        raise GcpoError(f"{label}: line {line}: no header row")
    names = [h if h != "" else f"Unnamed: {i}" for i, h in enumerate(header)]  # as pandas names them
    seen: set[str] = set()
    for h in names:
        if h in seen:
            raise GcpoError(f"{label}: line {line}: column {h!r} appears twice in the header; rename one (a row "
                            "cannot hold two values under one name)")
        seen.add(h)
    return names


def _csv_error(label: str, e: csv.Error, start: int, end: int) -> str:
    why, quotes = str(e), True
    if "unexpected end of data" in why:
        why = "a quoted field that starts here is never closed (unexpected end of data)"
    elif "expected after" in why:
        why = f"{why}: text after a closing quote"
    else:
        quotes = False
        if "field larger than field limit" in why:
            why = f"a field is over {csv.field_size_limit():,} characters ({ROW_FIELDS} times {FIELD_ENV})"
    span = f" (the record runs on to line {end}: a quote left open?)" if end > start and "after" in why else ""
    hint = "; check its quotes: a value that holds a quote must be quoted, its quotes doubled (\"\")" if quotes else ""
    return f"{label}: cannot read as CSV: line {start}: {why}{span}{hint}"


def _bytes_as_text(rows: list[dict]) -> list[dict]:
    """Binary columns that hold UTF-8 text become text, so that detection sees them as text;
    anything else binary stays bytes and its row is rejected by fields.check_row."""
    for row in rows:
        for k, v in row.items():
            if isinstance(v, bytes):
                try:
                    row[k] = v.decode("utf-8")
                except UnicodeDecodeError:
                    pass
    return rows


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


def _load_folder(path: Path, label: str, split: str | None, input_cap: int) -> Loaded:
    import datasets

    files = sorted(p for p in path.rglob("*") if p.is_file())
    size = sum(f.stat().st_size for f in files)
    if size > input_cap:
        raise _too_big(label, size, input_cap)
    try:
        obj = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as e:
        raise GcpoError(f"{label}: not a folder saved by datasets (save_to_disk): {_first_line(e)}")
    ds = _pick_split(obj, split, label)
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
    rows = _bytes_as_text(ds.to_list())
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
    rows = _bytes_as_text(ds.to_list())
    src = f"hf:{name}" + (f"/{subset}" if subset else "") + (f":{split}" if split else "")
    fp = _sha(src, getattr(ds, "_fingerprint", "") or store.dumps(rows))
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
    # rows whose text another problem has, with another answer: each a problem of its own
    # {where, id, same_text_as, answer, other_answer}
    variants: list[dict] = field(default_factory=list)
    solution_lists: int = 0  # golden answers taken from the first item of a list-valued solution

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
                          label=loaded.label, columns=loaded.columns)


def ingest_rows(db, rows: list[dict], set_name: str, *, source: str = "rows",
                problem: str | None = None, solution: str | None = None, answer: str | None = None,
                id: str | None = None, skip_invalid: bool = False,
                grader: Grader | None = None, max_field_bytes: int | None = None) -> IngestReport:
    """Ingest in-memory rows (dicts) into SET_NAME; the trainer's entry point for its own data.

    Fields are detected as for files unless the overrides name them. The same rows into the same
    set again are a no-op. Raises GcpoError (nothing written) on invalid rows unless `skip_invalid`."""
    rows = list(rows)
    loaded = Loaded(source, source, rows, [f"row {i + 1}" for i in range(len(rows))], _sha(store.dumps(rows)),
                    max_field_bytes=_limit(max_field_bytes, FIELD_ENV, MAX_FIELD_BYTES))
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
    fingerprint = _sha(loaded.fingerprint, overrides, IDENTITY)
    report = IngestReport(set_name, loaded.source, mapping.describe(), rows_read=loaded.rows_read)
    prior = store.prior_ingest(db, set_name, fingerprint)
    if prior:
        report.noop, report.rejected = True, prior["rejected"]
        report.present = prior["added"] + prior["present"]
        report.seconds = time.perf_counter() - t0
        return report

    own = grader is None
    grader = grader or Grader()  # starts its worker only when math-verify is needed
    try:
        _ingest_rows(db, loaded, set_name, mapping, fingerprint, skip_invalid, grader, report)
    finally:
        if own:
            grader.close()
    report.seconds = time.perf_counter() - t0
    return report


def _ingest_rows(db, loaded: Loaded, set_name: str, mapping: Mapping, fingerprint: str, skip_invalid: bool,
                 grader: Grader, report: IngestReport) -> None:
    kept: _Kept | None = _Kept(db, grader)
    rejects: list[tuple[str, str]] = []
    n_rejects = 0
    used, pending = used_fields(mapping), []
    for where, row, why in loaded.items():
        if why is None:
            try:
                record = build_record(row, where, mapping, used, loaded.max_field_bytes)
            except ValueError as e:
                why = str(e)
        if why is not None:
            n_rejects += 1
            if skip_invalid or n_rejects == 1:
                rejects.append((where, why))
            if not skip_invalid:
                kept, pending = None, []  # this ingest will fail: keep nothing, count what else is wrong
            continue
        if kept is None:
            continue
        pending.append(record)
        if len(pending) >= CHUNK:
            kept.add(pending)
            pending = []
    if n_rejects and not skip_invalid:
        w, why = rejects[0]
        n = n_rejects - 1
        more = f" (and {n} more invalid row{'s' * (n > 1)})" if n else ""
        raise GcpoError(f"{loaded.label}: {w}: {why}{more}; fix the file or pass --skip-invalid to skip "
                         "invalid rows; nothing was written")
    kept.add(pending)
    report.rejected = n_rejects
    report.rejects = [{"where": w, "reason": why} for w, why in rejects]
    if not kept.records:
        raise GcpoError(f"{loaded.label}: every row is invalid; nothing was written")
    _write(db, set_name, loaded.source, fingerprint, kept, report, grader)


def ingest_source(db, source: str, set_name: str, *, split: str | None = None,
                  subset: str | None = None, problem: str | None = None,
                  solution: str | None = None, answer: str | None = None, id: str | None = None,
                  count: int = 200, seed: int = 0, levels: str | list[int] = "1-5",
                  skip_invalid: bool = False, grader: Grader | None = None,
                  max_field_bytes: int | None = None, max_input_bytes: int | None = None) -> IngestReport:
    """Read SOURCE (file, datasets folder, hf:ORG/NAME, synthetic:arithmetic) into SET_NAME."""
    loaded = load_source(source, split=split, subset=subset, count=count, seed=seed, levels=levels,
                         max_field_bytes=max_field_bytes, max_input_bytes=max_input_bytes)
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


_PROBLEM_KEYS = ("id", "text", "answer", "metadata", "source_id", "known")
_NO_METADATA: dict = {}  # shared by every problem without metadata; never mutated


class _Problem(MappingABC):
    """One problem as store.write_ingest reads it ({id, text, answer, metadata, source_id, known})
    in a third of a dict's memory: a file of small rows keeps millions of these until the write."""

    __slots__ = _PROBLEM_KEYS

    def __init__(self, id, text, answer, metadata, source_id, known):
        self.id, self.text, self.answer, self.metadata = id, text, answer, metadata
        self.source_id, self.known = source_id, known

    def __getitem__(self, key):
        if key in _PROBLEM_KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self):
        return iter(_PROBLEM_KEYS)

    def __len__(self) -> int:
        return len(_PROBLEM_KEYS)


class _Kept:
    """What the write needs, gathered record by record in source order: each problem's first
    occurrence (as the row store.write_ingest takes), golden answers, and the rows that became
    problems of their own because their text was already another problem's with another answer.

    Which problem a record is (looked up CHUNK records at a time): its text's id when that text is
    new, or is held (in the database, or earlier in the source) with the same answer; otherwise
    `variant_id(text, answer)`. "The same answer" is identical text, else math-verify's verdict
    (`grader`, before the write opens its transaction), so "0.5" after "1/2" is a repeat, and a
    problem two data sets spell differently is still stored once."""

    def __init__(self, db, grader: Grader):
        self.db, self.grader = db, grader
        self.stored: dict[str, str] = {}  # answers the database already holds, for the ids met
        self.problems: dict[str, _Problem] = {}
        self.answers: dict[str, str] = {}  # one copy of each answer text ("2" is the answer of many problems)
        self.golden: list[tuple[str, str, str | None, str]] = []  # (problem id, solution, final, where)
        self.variants: list[tuple[str, str, str, str, str]] = []  # (where, id, text's id, its answer, answer)
        self.seen: dict[str, int] = {}  # problem id -> rows of this source that were it so far
        self.listed = 0  # golden answers taken from a list of solutions
        self.records = 0

    def add(self, records: list[Record]) -> None:
        if not records:
            return
        self.stored.update(store.stored_answers(self.db, {r.id for r in records if r.id not in self.problems}))
        # The answer each record's text already has. It is the database's, else that of the text's
        # first record in the source, which is always that text's problem: so it is known before
        # any verdict, and verdicts can be asked for the whole chunk at once.
        held: list[str | None] = []
        firsts: dict[str, str] = {}
        for r in records:
            first = self.problems.get(r.id)
            answer = self.stored.get(r.id) or (first.answer if first is not None else firsts.get(r.id))
            if answer is None:
                firsts[r.id] = r.answer
            held.append(answer)
        same: list[bool | None] = [None if h is None else h == r.answer or local_verdict(h, r.answer)
                                   for h, r in zip(held, records)]
        ask = [i for i, v in enumerate(same) if v is None and held[i] is not None]
        for i, ok in zip(ask, self.grader.grade([(held[i], records[i].answer) for i in ask])):
            same[i] = ok
        ids = [r.id if h is None or ok else variant_id(r.text, r.answer) for r, h, ok in zip(records, held, same)]
        for i, pid in enumerate(ids):  # a repeat within the source is a problem of its own
            n = self.seen.get(pid, 0)
            self.seen[pid] = n + 1
            if n:
                ids[i] = repeat_id(pid, n)
        other = {pid for pid, r in zip(ids, records) if pid != r.id and pid not in self.problems}
        if other:
            self.stored.update(store.stored_answers(self.db, other))
        for r, pid, h in zip(records, ids, held):
            self.records += 1
            answer = self.answers.setdefault(r.answer, r.answer) if len(r.answer) < 16 else r.answer
            self.problems[pid] = _Problem(pid, r.text, answer, r.metadata or _NO_METADATA, r.source_id,
                                          pid in self.stored)
            if pid == variant_id(r.text, r.answer):  # not a repeat of one
                self.variants.append((r.where, pid, r.id, h, r.answer))
            if r.solution:
                self.golden.append((pid, r.solution, r.final, r.where))
                self.listed += r.listed


def _write(db, set_name: str, source: str, fingerprint: str, kept: _Kept, report: IngestReport,
           grader: Grader) -> None:
    golden = kept.golden
    pairs = [(kept.stored.get(pid, kept.problems[pid].answer), final) for pid, _, final, _ in golden]
    # Grade before the transaction opens: math-verify may take seconds, the write lock must not.
    verdicts = grader.grade(pairs)
    report.variants = [{"where": w, "id": pid, "same_text_as": base, "answer": a, "other_answer": h}
                       for w, pid, base, h, a in kept.variants]
    report.solution_lists = kept.listed
    report.golden_total, report.golden_verified = len(golden), sum(verdicts)
    report.mismatches = [{"where": w, "id": pid, "answer": a, "golden": final}
                         for (pid, _, final, w), (a, _), ok in zip(golden, pairs, verdicts) if not ok]
    del pairs
    golden_rows = [dict(id=_sha(pid, solution)[:16], problem_id=pid, text=solution, final_answer=final,
                        source=f"dataset:{source}", verified=int(ok))
                   for (pid, solution, final, _), ok in zip(golden, verdicts)]
    kept.golden = golden = []
    counts = dict(records=kept.records, rows_read=report.rows_read, rejected=report.rejected,
                  golden_verified=report.golden_verified, golden_total=report.golden_total)
    written = store.write_ingest(db, set_name, source, fingerprint, list(kept.problems.values()), golden_rows, counts)
    report.added, report.present, report.new_problems = written["added"], written["present"], written["new_problems"]
