"""Sources in: a file (JSONL, JSON, CSV, Parquet), a folder saved by datasets, hf:ORG/NAME or
synthetic:KIND, read into plain rows (a `Loaded`) under the size caps; ingest.py maps, validates
and writes them.

JSONL (and JSON lines in a .json file) is streamed. It is read line by line twice: once to hash
it (the no-op fingerprint), learn every field name and keep a sample of rows for detection; once
to turn each line into a problem as it is read. Neither read keeps the file, its text or its
parsed rows; the file is checked to be unchanged between the two reads. JSON arrays and CSV are
read whole and parsed by parsers.py (strict, every error naming its line). Parquet, `save_to_disk`
folders and `hf:ORG/NAME` go through `datasets`; `synthetic:arithmetic` comes from synthetic.py.

A pipe or a device (a FIFO, a symlink to /dev/zero) cannot be read twice: it is copied once, in
1 MiB chunks, to an anonymous temporary file and read from there. The copy stops at the input
cap, a text format's at its first NUL byte (never text: /dev/zero ends there at once) and a
Parquet one's at a first block that is not Parquet, so an endless input costs neither memory nor
more than the cap of disk (issue 27 item 11: it was read whole into memory first).

Limits (env var, or the `max_field_bytes` / `max_input_bytes` arguments): one field at most
GCPO_MAX_FIELD_BYTES of UTF-8 (default 1 MiB; a longer one rejects its row); one JSONL line at
most ROW_FIELDS (16) times that (a longer one is rejected unread: no 1 GB line in memory); a file
or folder at most GCPO_MAX_INPUT_BYTES (default 2 GiB). Sizes are bytes, or take K/M/G (binary).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from . import store, synthetic
from .errors import GcpoError
from .fields import SAMPLE
from .parsers import (INPUT_ENV, ROW_FIELDS, Lines, decode_utf8, first_line, jsonl_shaped, parse_json_array,
                      parse_line, parse_object, read_csv)
from .texts import MAX_FIELD_BYTES, field_limit, size_limit

SYNTHETIC_KINDS = ("arithmetic",)
MAX_INPUT_BYTES = 2 * 2**30
SAMPLE_BYTES = 32 * 2**20  # a streamed file's detection sample: fields.SAMPLE rows, fewer once past this size
COPY_CHUNK = 2**20  # a pipe is copied this many bytes at a time


def content_hash(*parts: str | bytes) -> str:
    """sha256 over the parts, each followed by a NUL byte: fingerprints and golden-answer ids."""
    h = hashlib.sha256()
    for p in parts:
        # surrogatepass: in-memory rows may hold a lone surrogate (rejected later, with its row);
        # valid text encodes exactly as before, so fingerprints do not change.
        h.update(p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def limits(max_field_bytes: int | None = None, max_input_bytes: int | None = None) -> tuple[int, int]:
    """(field limit, input limit) in bytes: the arguments, else GCPO_MAX_FIELD_BYTES and
    GCPO_MAX_INPUT_BYTES, else 1 MiB and 2 GiB. GcpoError for a value that is not a size."""
    return field_limit(max_field_bytes), size_limit(max_input_bytes, INPUT_ENV, MAX_INPUT_BYTES)


def _too_big(label: str, size: int, cap: int) -> GcpoError:
    return GcpoError(f"{label}: the input is {size:,} bytes, over the {cap:,}-byte input limit "
                     f"({INPUT_ENV}); nothing was written")


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
        return load_synthetic(source, count, seed, levels)
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
        if not path.is_file():  # a pipe or a device: it cannot be read twice
            return _load_stream(path, source, src, ext, field_cap, input_cap)
        if path.stat().st_size > input_cap:
            raise _too_big(source, path.stat().st_size, input_cap)
        if ext == ".parquet":
            return _load_parquet(path, source, src)
        opener = partial(open, path, "rb")
        if ext in (".jsonl", ".ndjson") or (ext == ".json" and jsonl_shaped(opener, field_cap)):
            return _load_jsonl(opener, source, src, field_cap, input_cap)
        return _load_bytes(path.read_bytes(), source, src, ext, field_cap, input_cap)
    except OSError as e:
        raise GcpoError(f"{source}: cannot read the file ({e.strerror or e})")


def _load_bytes(data: bytes, label: str, src: str, ext: str, field_cap: int, input_cap: int) -> Loaded:
    """A text file read whole: CSV, a JSON array or object, or JSON lines in a .json file."""
    text = decode_utf8(data, label)
    if not text.strip():
        raise GcpoError(f"{label}: the file is empty")
    if ext == ".csv":
        rows, where, bad = read_csv(label, text, field_cap)
        return Loaded(src, label, rows, where, content_hash(data), bad)
    if ext == ".json" and text.lstrip().startswith("["):
        rows, where = parse_json_array(text, label)
        return Loaded(src, label, rows, where, content_hash(data))
    obj = parse_object(text) if ext == ".json" and text.lstrip().startswith("{") else None
    if obj is not None:  # one (maybe pretty-printed) object is one row; otherwise these are JSON lines
        return Loaded(src, label, [obj], ["line 1"], content_hash(data))
    return _load_jsonl(partial(io.BytesIO, data), label, src, field_cap, input_cap)


def _load_parquet(path: Path, label: str, src: str) -> Loaded:
    rows = _bytes_as_text(_read_with_datasets("parquet", path, label))
    return Loaded(src, label, rows, [f"row {i + 1}" for i in range(len(rows))], _file_hash(path))


def _load_stream(path: Path, label: str, src: str, ext: str, field_cap: int, input_cap: int) -> Loaded:
    """A pipe or a device, copied once to a temporary file (the module docstring) and read from
    there: JSON lines streamed from an anonymous file that lives as long as the Loaded, a Parquet
    file through a named copy, the other formats read whole from the copy."""
    if ext == ".parquet":
        with tempfile.TemporaryDirectory(prefix="gcpo-ingest-") as d:
            copy = Path(d) / path.name
            with open(copy, "wb") as out:
                _copy_capped(path, out, label, input_cap, magic=b"PAR1")
            return _load_parquet(copy, label, src)
    spool = tempfile.TemporaryFile(prefix="gcpo-ingest-")
    _copy_capped(path, spool, label, input_cap, magic=None)
    spool.flush()  # _reopen reads through another file object
    opener = partial(_reopen, spool)
    if ext in (".jsonl", ".ndjson") or (ext == ".json" and jsonl_shaped(opener, field_cap)):
        return _load_jsonl(opener, label, src, field_cap, input_cap)
    with spool:
        spool.seek(0)
        data = spool.read()
    return _load_bytes(data, label, src, ext, field_cap, input_cap)


def _copy_capped(path: Path, out, label: str, cap: int, magic: bytes | None) -> None:
    """Copy `path` to the file `out` in COPY_CHUNK pieces. GcpoError once more than `cap` bytes
    have come, at the first NUL byte of a text format (`magic` None), or when a binary format's
    input does not start with its `magic` bytes."""
    total, line = 0, 1
    with open(path, "rb") as f:
        for chunk in iter(partial(f.read, COPY_CHUNK), b""):
            if magic is not None and total == 0 and not chunk.startswith(magic[:len(chunk)]):
                raise GcpoError(f"{label}: not a {Path(label).suffix[1:].title()} file (it does not start with "
                                f"{magic!r}); nothing was written")
            total += len(chunk)
            if total > cap:
                raise GcpoError(f"{label}: the input passes the {cap:,}-byte input limit ({INPUT_ENV}); "
                                "nothing was written")
            if magic is None and b"\0" in chunk:
                line += chunk.count(b"\n", 0, chunk.index(b"\0"))
                raise GcpoError(f"{label}: line {line}: a NUL byte: binary data, not text; nothing was written")
            line += chunk.count(b"\n")
            out.write(chunk)


def _reopen(spool):
    """A new file object over the anonymous copy, from its start (its reads are one at a time)."""
    f = os.fdopen(os.dup(spool.fileno()), "rb")
    f.seek(0)
    return f


def _file_hash(path: Path) -> str:
    """content_hash(the file's bytes), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(partial(f.read, COPY_CHUNK), b""):
            h.update(chunk)
    h.update(b"\0")
    return h.hexdigest()


def _load_jsonl(opener, label: str, src: str, field_cap: int, input_cap: int) -> Loaded:
    """First read of a JSONL file: the fingerprint, every field name, the first SAMPLE rows (fewer
    if they pass SAMPLE_BYTES), the number of lines and the first unreadable one. The rows
    themselves are streamed later."""
    lines = Lines(opener, label, field_cap * ROW_FIELDS, input_cap)
    sample, where, bad, columns, n_lines, sampled = [], [], [], {}, 0, 0
    for n, text, why in lines:
        n_lines += 1
        row = None
        if why is None:
            row, why = parse_line(text)
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
    lines = Lines(opener, label, row_cap, input_cap)
    try:
        for n, text, why in lines:
            row = None
            if why is None:
                row, why = parse_line(text)
            yield f"line {n}", row, why
    except OSError as e:
        raise GcpoError(f"{label}: cannot read the file ({e.strerror or e}); nothing was written")
    if lines.digest != digest:
        raise GcpoError(f"{label}: the file changed while it was being read; nothing was written")


def _bytes_as_text(rows: list[dict]) -> list[dict]:
    """Binary columns that hold UTF-8 text become text, so that detection sees them as text;
    anything else binary stays bytes and its row is rejected by rows.check_row."""
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
            raise GcpoError(f"{label}: cannot read as {kind.upper()}: {first_line(e)}")
        finally:
            datasets.logging.set_verbosity(verbosity)


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
        raise GcpoError(f"{label}: not a folder saved by datasets (save_to_disk): {first_line(e)}")
    ds = _pick_split(obj, split, label)
    h = hashlib.sha256()
    for f in files:  # in chunks: one arrow file may be most of the input cap
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as data:
            for chunk in iter(partial(data.read, COPY_CHUNK), b""):
                h.update(chunk)
    rows = _bytes_as_text(ds.to_list())
    src = str(path.resolve()) + (f":{split}" if split else "")
    where = [f"row {i + 1}" for i in range(len(rows))]
    return Loaded(src, label, rows, where, content_hash(h.hexdigest(), split or ""))


def _load_hub(name: str, split: str | None, subset: str | None) -> Loaded:
    import datasets

    label = f"hf:{name}"
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        raise GcpoError(f"{label}: not a hub dataset id; expected hf:ORG/NAME")
    datasets.disable_progress_bars()
    try:
        obj = datasets.load_dataset(name, subset, split=split)
    except Exception as e:  # offline, unknown id, unknown subset/split: all end the same way
        raise GcpoError(f"{label}: cannot load from the hub: {first_line(e)}")
    ds = _pick_split(obj, split, label)
    rows = _bytes_as_text(ds.to_list())
    src = f"hf:{name}" + (f"/{subset}" if subset else "") + (f":{split}" if split else "")
    fp = content_hash(src, getattr(ds, "_fingerprint", "") or store.dumps(rows))
    return Loaded(src, label, rows, [f"row {i + 1}" for i in range(len(rows))], fp)


def load_synthetic(source: str, count: int, seed: int, levels) -> Loaded:
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
    return Loaded(src, source, rows, [f"row {i + 1}" for i in range(len(rows))], content_hash(src))



def _where_key(w: str) -> tuple[int, str]:
    m = re.search(r"\d+", w)
    return (int(m.group()) if m else 0, w)

