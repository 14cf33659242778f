"""Ingest problem sets: read a source (readers.py), map its fields (fields.py), turn each row into
a validated problem (rows.py) and write them in one transaction.

However read, the write is one transaction: an invalid row writes nothing unless --skip-invalid,
and every message names the line (or row). Rows are turned into problems, graded and staged a
chunk at a time (store.IngestStage), so memory stays flat whatever the source's size, and the
write lock is held only while the staged rows are copied in.

Refused, naming the line (rows: skipped and reported with --skip-invalid), by rows.py under
texts.py's rules (the one validation of every text that reaches the model or the database):
- Any field: a lone surrogate (SQLite cannot store it), binary data that is not UTF-8 (binary
  that is UTF-8, as Parquet often stores text, is decoded), more than the field limit.
- Answers: inf and nan (as numbers or as text; an infinite answer is written \\infty), longer than
  the grader reads (answers.MAX_ANSWER_CHARS). An integer-valued number beyond 2**53 keeps the
  text it was written with: `1e300` is stored as "1e300" (a Parquet float as Python writes it,
  "1e+300"), never as 301 digits that are not the data's; 27.0 is still "27".
- Chat special tokens (`<|im_end|>`, `<|eot_id|>`, `</s>`, `[INST]`...; texts.chat_token) in the
  problem text, the solution or the answer: a tokenizer turns these strings into real
  special-token ids, so a row holding them could close the user's turn in a prompt and write the
  assistant's (or a golden answer could end its own turn early). No real problem in
  ../shared/data holds one. The tokenising side (special-token strings kept as text) is the
  other layer, for models whose tokens are not in the list.

Identity (content hashes, as simonw/llm does): a problem's id is the sha256 of its
whitespace-normalised text, so the same problem in two sets is stored once; a golden answer's id
hashes (problem, text); an ingest's fingerprint (source content + field overrides + IDENTITY)
turns re-ingesting the same source into the same set into a no-op.

Every source row is a problem (issue 13): a row whose text another problem already has (in the
database, or earlier in the source) is that problem only when its answer is the same (the same
text, or equal by math-verify: "0.5" and "1/2"); with another answer (an exercise set whose
figure or context differs) it is a problem of its own, with `rows.variant_id(text, answer)`,
listed under `variants` in the report. A repeat within the source (same text, same answer) is a
problem too, `rows.repeat_id(id, n)`, so a set holds as many problems as the source has rows
(benchmarks count repeated rows). Old ids never change.

Worked solutions held as a list of strings (OlympiadBench) give their first non-empty item as
the golden answer (counted in `solution_lists`); a list answer is rows._listed_answer's.

A worked solution that states no final answer (no \\boxed{}, '####' or "the answer is": an
OlympiadBench proof that ends "Hence $x=2$ or $x=3$.") in a row that has a final-answer field is
stored as it is, unverified, and beside it completed with that answer (issue 25 item 8):

    SOLUTION

    The final answer is $\\boxed{ANSWER}$.

(rows.FINAL_ANSWER_FORM: at ingest there is no recipe, so the boxed form every prompt preset asks
for). The completion is graded like any other golden answer; its row records what it was built
from (`derived_from`) and how (params_json: the construction, the form, the answer field). Where
it verifies, it is the problem's golden answer for training and for `gcpo eval --model golden`
(counted in `golden_completed`; `golden_verified` counts rows with any verified golden answer).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from . import store
from .answers import local_verdict
from .errors import GcpoError
from .fields import Mapping, detect_mapping, used_fields
from .grader import Grader
from .readers import Loaded, content_hash, load_source, load_synthetic
from .rows import ValidRow, completion_provenance, repeat_id, validate_row, variant_id
from .texts import field_limit

CHUNK = 2000  # rows looked up, graded and staged at a time
# Part of every ingest's fingerprint: the rules that turn rows into problems. When they change, a
# source ingested under the old ones is read once more (adding what they lost, e.g. rows merged
# into another problem of the same text, golden answers from list-valued solutions) and is then a
# no-op again; what was stored keeps its ids.
IDENTITY = "rows-are-problems/3"  # /3: solutions that state no final answer are completed


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
    golden_completed: int = 0  # solutions that state no final answer, completed with the row's (rows.py)

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
    loaded = Loaded(source, source, rows, [f"row {i + 1}" for i in range(len(rows))], content_hash(store.dumps(rows)),
                    max_field_bytes=field_limit(max_field_bytes))
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
    fingerprint = content_hash(loaded.fingerprint, overrides, IDENTITY)
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
    staged = _Staged(db, grader, store.dumps(completion_provenance(mapping)))
    try:
        rejects: list[tuple[str, str]] = []
        n_rejects = 0
        used, pending = used_fields(mapping), []
        for where, row, why in loaded.items():
            if why is None:
                try:
                    record = validate_row(row, where, mapping, used, loaded.max_field_bytes)
                except ValueError as e:
                    why = str(e)
            if why is not None:
                n_rejects += 1
                if skip_invalid or n_rejects == 1:
                    rejects.append((where, why))
                if not skip_invalid:
                    pending = []  # this ingest will fail: stage nothing more, count what else is wrong
                continue
            if n_rejects and not skip_invalid:
                continue
            pending.append(record)
            if len(pending) >= CHUNK:
                staged.add(pending)
                pending = []
        if n_rejects and not skip_invalid:
            w, why = rejects[0]
            n = n_rejects - 1
            more = f" (and {n} more invalid row{'s' * (n > 1)})" if n else ""
            raise GcpoError(f"{loaded.label}: {w}: {why}{more}; fix the file or pass --skip-invalid to skip "
                            "invalid rows; nothing was written")
        staged.add(pending)
        if not staged.records:
            raise GcpoError(f"{loaded.label}: every row is invalid; nothing was written")
        report.rejected = n_rejects
        report.rejects = [{"where": w, "reason": why} for w, why in rejects]
        report.variants = [{"where": w, "id": pid, "same_text_as": base, "answer": a, "other_answer": h}
                           for w, pid, base, h, a in staged.variants]
        report.solution_lists = staged.listed
        report.golden_completed = staged.completed
        report.golden_total, report.golden_verified = staged.golden_total, staged.golden_verified
        report.mismatches = staged.mismatches
        counts = dict(records=staged.records, rows_read=report.rows_read, rejected=report.rejected,
                      golden_verified=report.golden_verified, golden_total=report.golden_total)
        written = staged.stage.commit(set_name, loaded.source, fingerprint, counts)
    finally:
        staged.stage.close()
    report.added, report.present, report.new_problems = written["added"], written["present"], written["new_problems"]


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
    loaded = load_synthetic("synthetic:arithmetic", count, seed, levels)
    name = name or "arithmetic-" + loaded.source.split("?", 1)[1].replace("&", "-").replace("=", "")
    sources = set(store.set_sources(db, name))
    if sources:
        if sources != {loaded.source}:
            held = ", ".join(sorted(sources)) or "unknown"
            raise GcpoError(f"set {name!r} already holds other problems ({held}); choose another name")
        return name
    ingest_loaded(db, loaded, name, grader=grader)
    return name


class _Staged:
    """Valid rows turned into the problems they are, CHUNK rows at a time in source order, and
    staged (store.IngestStage: memory stays flat whatever the source's size, issue 27 item 11)
    with their golden answers, graded here, before the write's transaction opens: math-verify may
    take seconds, the write lock must not wait on it. Keeps what the report lists: the rows that
    became problems of their own because their text was another problem's with another answer,
    and the golden answers that did not verify.

    Which problem a row is: its text's id when that text is new, or is held (in the database, or
    earlier in the source) with the same answer; otherwise `variant_id(text, answer)`; the n-th
    repeat of either within the source is `repeat_id(id, n)`. "The same answer" is identical
    text, else math-verify's verdict, so "0.5" after "1/2" is a repeat, and a problem two data
    sets spell differently is still stored once."""

    def __init__(self, db, grader: Grader, completed_params: str):
        self.db, self.grader = db, grader
        self.completed_params = completed_params  # the params_json of a completed solution
        self.stage = store.IngestStage(db)
        self.variants: list[tuple[str, str, str, str, str]] = []  # (where, id, text's id, its answer, answer)
        self.mismatches: list[dict] = []  # {where, id, answer, golden}
        self.listed = 0  # golden answers taken from a list of solutions
        self.completed = 0  # solutions completed with their row's final answer
        self.records = self.golden_total = self.golden_verified = 0

    def add(self, records: list[ValidRow]) -> None:
        if not records:
            return
        texts = {r.id for r in records}
        stored = store.stored_answers(self.db, texts)
        staged = self.stage.answers(texts - stored.keys())
        # The answer each record's text already has: the database's, else that of the text's
        # first record in the source, which is always that text's problem. So it is known before
        # any verdict, and verdicts can be asked for the whole chunk at once.
        held: list[str | None] = []
        firsts: dict[str, str] = {}
        for r in records:
            answer = stored.get(r.id) or staged.get(r.id) or firsts.get(r.id)
            if answer is None:
                firsts[r.id] = r.answer
            held.append(answer)
        same: list[bool | None] = [None if h is None else h == r.answer or local_verdict(h, r.answer)
                                   for h, r in zip(held, records)]
        ask = [i for i, v in enumerate(same) if v is None and held[i] is not None]
        for i, ok in zip(ask, self.grader.grade([(held[i], records[i].answer) for i in ask])):
            same[i] = ok
        bases = [r.id if h is None or ok else variant_id(r.text, r.answer) for r, h, ok in zip(records, held, same)]
        seen = self.stage.repeats(bases)  # rows of this source that were each problem so far
        ids = []
        for base in bases:  # a repeat within the source is a problem of its own
            n = seen.get(base, 0)
            seen[base] = n + 1
            ids.append(repeat_id(base, n) if n else base)
        stored.update(store.stored_answers(self.db, {pid for pid, r in zip(ids, records) if pid != r.id}))
        problems, golden, pairs, solved = [], [], [], []
        for r, pid, base, h in zip(records, ids, bases, held):
            problems.append((pid, base, r.text, r.answer, store.dumps(r.metadata or {}), r.source_id))
            if pid == variant_id(r.text, r.answer):  # not a repeat of one
                self.variants.append((r.where, pid, r.id, h, r.answer))
            if r.solution:
                # (row, its golden answers): the solution, then its completion where it states no answer
                answer, original = stored.get(pid, r.answer), content_hash(pid, r.solution)[:16]
                mine = [len(golden)]
                golden.append((original, pid, r.solution, r.final, None, None))
                pairs.append((answer, r.final))
                if r.completed:
                    mine.append(len(golden))
                    golden.append((content_hash(pid, r.completed)[:16], pid, r.completed, r.completed_final,
                                   original, self.completed_params))
                    pairs.append((answer, r.completed_final))
                solved.append((r, pid, answer, mine))
                self.listed += r.listed
                self.completed += r.completed is not None
        verdicts = self.grader.grade(pairs)
        self.records += len(records)
        self.golden_total += len(solved)  # rows with a worked solution, each verified when one of its answers is
        for r, pid, answer, mine in solved:
            if any(verdicts[i] for i in mine):
                self.golden_verified += 1
            else:
                self.mismatches.append({"where": r.where, "id": pid, "answer": answer, "golden": r.final})
        self.stage.add(problems, [(gid, pid, text, final, int(ok), of, params)
                                  for (gid, pid, text, final, of, params), ok in zip(golden, verdicts)])
