"""An ingest's problems and golden answers staged chunk by chunk, then written in one transaction.

Why stage (issue 27 item 11): an ingest kept every problem it would write in Python until the
end (~12x the file in memory: 200k rows, 33 MB -> 407 MB RSS). Here each chunk goes to TEMP
tables of the same connection as it is read, so memory stays flat whatever the size of the
source; the write is still all or nothing: nothing reaches the main database until `commit`,
whose one transaction copies the staged rows with INSERT ... SELECT, and a failed or abandoned
ingest leaves nothing behind (`close` drops the tables; they die with the connection anyway).

Why TEMP tables rather than chunks written inside one long transaction on the database: TEMP
tables live in the connection's own temporary file, so staging takes no lock on the database.
The write lock is held only for the final copy, not while a large file is read and its golden
answers graded (seconds to minutes), so a training writing its steps meanwhile does not wait.
SQLite spills TEMP pages to disk past its small page cache (TEMP_STORE=1, the default build).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlite_utils import Database

from .db import rows_in, utcnow, write

_TABLES = ("gcpo_stage_problems", "gcpo_stage_golden")


@contextmanager
def _temp_transaction(db: Database) -> Iterator[None]:
    """A deferred transaction for statements on TEMP tables only: it takes no lock on the database
    file (BEGIN IMMEDIATE, as `write` does, would take the write lock). A transaction the caller
    already has open is joined instead."""
    if db.conn.in_transaction:
        with db.atomic():
            yield
        return
    db.conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


class IngestStage:
    """Staged rows of one ingest on one connection: `add` chunks in source order, look up what
    earlier chunks staged, then `commit` once (or `close` to drop everything)."""

    def __init__(self, db: Database):
        self.db = db
        self.rows = 0
        self._drop()
        with self._temp():
            # pos: source order (set positions follow it); base: the id before a repeat got its
            # own (rows of this source that were that problem so far: `repeats`).
            self.db.conn.execute("CREATE TEMP TABLE gcpo_stage_problems (id TEXT PRIMARY KEY, base TEXT NOT NULL,"
                                 " pos INTEGER NOT NULL, text TEXT NOT NULL, answer TEXT NOT NULL,"
                                 " metadata_json TEXT NOT NULL, source_id TEXT)")
            self.db.conn.execute("CREATE INDEX temp.gcpo_stage_base ON gcpo_stage_problems (base)")
            self.db.conn.execute("CREATE TEMP TABLE gcpo_stage_golden (id TEXT, problem_id TEXT NOT NULL,"
                                 " text TEXT NOT NULL, final_answer TEXT, verified INTEGER NOT NULL,"
                                 " derived_from TEXT, params_json TEXT)")

    def _temp(self):
        return _temp_transaction(self.db)

    def _drop(self) -> None:
        with self._temp():
            for t in _TABLES:
                self.db.conn.execute(f"DROP TABLE IF EXISTS temp.{t}")

    def answers(self, ids) -> dict[str, str]:
        """id -> answer of the staged problems among `ids`."""
        return {r["id"]: r["answer"] for r in rows_in(
            self.db, "SELECT id, answer FROM temp.gcpo_stage_problems WHERE id IN ({ids})", set(ids))}

    def repeats(self, ids) -> dict[str, int]:
        """id -> staged rows that were problem `id` before a repeat got its own id."""
        return {r["base"]: r["n"] for r in rows_in(
            self.db, "SELECT base, COUNT(*) AS n FROM temp.gcpo_stage_problems WHERE base IN ({ids}) GROUP BY base",
            set(ids))}

    def add(self, problems: list[tuple], golden: list[tuple]) -> None:
        """problems: (id, base, text, answer, metadata_json, source_id) in source order, each id
        once in the whole ingest; golden: (id, problem_id, text, final_answer, verified,
        derived_from, params_json), a golden answer before one derived from it."""
        with self._temp():
            self.db.conn.executemany(
                "INSERT INTO temp.gcpo_stage_problems (id, base, pos, text, answer, metadata_json, source_id)"
                " VALUES (?,?,?,?,?,?,?)", [(p[0], p[1], self.rows + i, *p[2:]) for i, p in enumerate(problems)])
            self.db.conn.executemany("INSERT INTO temp.gcpo_stage_golden (id, problem_id, text, final_answer, verified,"
                                     " derived_from, params_json) VALUES (?,?,?,?,?,?,?)", golden)
        self.rows += len(problems)

    def commit(self, set_name: str, source: str, fingerprint: str, counts: dict) -> dict:
        """One ingest, all or nothing: the set (created if new), the staged problems it did not
        hold, their golden answers (origin dataset, source_file SOURCE) and the ingest's record. A staged
        problem the database already holds gains the metadata keys it lacked (MATH's `level` met
        again through its rllm copy); keys it has keep their first value. Returns {added,
        present, new_problems}."""
        now = utcnow()
        sql = self.db.conn.execute
        with write(self.db):
            row = sql("SELECT id FROM problem_sets WHERE name = ?", [set_name]).fetchone()
            set_id = row[0] if row else sql(
                "INSERT INTO problem_sets (name, description, created_at) VALUES (?,?,?)",
                [set_name, f"ingested from {source}", now]).lastrowid
            start = sql("SELECT COALESCE(MAX(position) + 1, 0) FROM set_problems WHERE set_id = ?",
                        [set_id]).fetchone()[0]
            sql("UPDATE problems SET metadata_json = json_patch(s.metadata_json, problems.metadata_json)"
                " FROM temp.gcpo_stage_problems s WHERE s.id = problems.id AND s.metadata_json != '{}'")
            new = ("FROM temp.gcpo_stage_problems s WHERE s.id NOT IN"
                   " (SELECT problem_id FROM set_problems WHERE set_id = :set)")
            new_problems = sql("INSERT OR IGNORE INTO problems (id, text, answer, metadata_json, created_at)"
                               f" SELECT s.id, s.text, s.answer, s.metadata_json, :now {new} ORDER BY s.pos",
                               dict(set=set_id, now=now)).rowcount
            added = sql("INSERT OR IGNORE INTO set_problems (set_id, problem_id, position, source_id)"
                        f" SELECT :set, s.id, :start + ROW_NUMBER() OVER (ORDER BY s.pos) - 1, s.source_id {new}"
                        " ORDER BY s.pos", dict(set=set_id, start=start)).rowcount
            sql("INSERT OR IGNORE INTO golden_answers (id, problem_id, text, final_answer, source_file, verified,"
                " created_at, derived_from, params_json) SELECT id, problem_id, text, final_answer, ?, verified, ?,"
                " derived_from, params_json FROM temp.gcpo_stage_golden ORDER BY rowid", [source, now])
            present = counts["records"] - added
            sql("INSERT INTO ingests (set_id, source, fingerprint, rows_read, added, present, rejected,"
                " golden_verified, golden_total, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [set_id, source, fingerprint, counts["rows_read"], added, present, counts["rejected"],
                 counts["golden_verified"], counts["golden_total"], now])
        return dict(added=added, present=present, new_problems=new_problems)

    def close(self) -> None:
        """Drop the staged rows (after `commit`, or instead of it)."""
        self._drop()
