"""Strict parsers for the text formats ingest reads: JSON lines, JSON arrays and CSV (readers.py
turns what they return into rows to ingest).

Why our own and not datasets' or pandas': datasets' JSON reader coerces mixed-type columns ("007"
and 2.5 in one column become numbers) and pandas' CSV reader merges rows after a stray quote,
shifts columns and reads "NA" as missing. Here `json` parses each JSON value (a number keeps the
text it was written with when a float cannot: `1e300`), and `csv` in strict mode reads CSV, so
that every error names its line:
- CSV: a quote that is never closed or is followed by text (the error names the line its record
  starts on), a column name twice in the header (file error), a row whose field count is not the
  header's (an unreadable row). Only an empty cell is missing; "NA", "null", "007" stay text.
- JSON: a trailing comma in an array (file error), numbers Python cannot hold (over 4,300
  digits), nesting deeper than the parser's recursion limit.
- JSON lines (`Lines`): a line longer than its cap is rejected unread (no 1 GB line in memory);
  past the input cap, or at bytes that are not UTF-8, reading stops with an error naming the line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from functools import partial
from typing import Iterator

from .errors import GcpoError
from .texts import FIELD_ENV

INPUT_ENV = "GCPO_MAX_INPUT_BYTES"
ROW_FIELDS = 16  # a JSONL line may hold this many fields' worth of bytes
BOM = b"\xef\xbb\xbf"


def first_line(e: Exception) -> str:
    """The first line of an exception's message (300 characters at most), or its type's name."""
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:300]


def decode_utf8(data: bytes, label: str) -> str:
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


def parse_object(text: str) -> dict | None:
    """The whole text as one JSON object (a pretty-printed .json file of one row), else None."""
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _json_error(e: BaseException) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at column {e.colno})"
    if isinstance(e, RecursionError):
        return "not valid JSON for Python (nested too deeply)"
    if "digits" in str(e):
        return "not valid JSON for Python (a number of more than 4,300 digits)"
    return f"not valid JSON ({first_line(e)})"


def _type_name(obj) -> str:
    return "float" if isinstance(obj, float) else type(obj).__name__


def parse_line(text: str) -> tuple[dict | None, str | None]:
    """One JSONL line: (the object, None) or (None, why it is not a row)."""
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, a number too long for Python
        return None, _json_error(e)
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {_type_name(obj)}"
    return obj, None


class Lines:
    """The non-blank lines of a JSONL file, decoded, with their numbers; hashes every byte it reads
    (`digest`, once exhausted: readers.content_hash of the content). A line longer than `row_cap`
    bytes is not read into memory: it comes back as (number, None, why). Past `input_cap` bytes,
    or at bytes that are not UTF-8, it stops with a GcpoError that names the line."""

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
                skip = 3 if n == 1 and raw.startswith(BOM) else 0
                try:
                    text = raw[skip:].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise GcpoError(f"{self.label}: line {n}: not UTF-8 text (byte 0x{raw[skip + e.start]:02x} at "
                                    f"column {skip + e.start + 1}); re-save the file as UTF-8")
                if text.strip():
                    yield n, text, None
        h.update(b"\0")
        self.digest = h.hexdigest()


def jsonl_shaped(opener, field_cap: int) -> bool:
    """Is this .json file (`opener()`: it, opened in binary) JSON lines (its first non-blank line
    a whole JSON value), not one array or one pretty-printed object? Only the first line is read."""
    with opener() as f:
        for raw in iter(partial(f.readline, field_cap * ROW_FIELDS + 1), b""):
            text = raw.removeprefix(BOM).decode("utf-8", "replace")
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


def parse_json_array(text: str, label: str) -> tuple[list[dict], list[str]]:
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


def read_csv(label: str, text: str, field_cap: int) -> tuple[list[dict], list[str], list[tuple[str, str]]]:
    """(rows, where each row starts, unreadable rows as (where, why)) of CSV text. A strict `csv`
    reader: a quote that is never closed, or text after a closing quote, is an error naming the
    line its record starts on (pandas would merge the rows that follow); a repeated column name is
    an error; a row with another field count than the header's is an unreadable row. Every value
    is text as written; an empty cell is missing (None)."""
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
    return rows, where, bad


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
