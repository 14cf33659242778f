"""The queries behind `gcpo inspect` (issue 5): pure functions from a Database to plain data.

Every figure comes from aggregated SQL (GROUP BY run/problem/step) answered from the covering
indexes of m002, so a problem with 10,000 rollouts or a run with 600,000 costs one index range
scan rather than a row fetch per rollout. The dicts returned here are exactly what `--json`
prints; render.py draws them.

Definitions, per run, over a problem's appearances (its groups) ordered by step:
  k of n     correct rollouts among the group's n, not counting the golden answer (GA)
  solved     k >= 1
  golden     a GA was injected into the group (every sampled answer was wrong)
  graduated  the first solved step, when the problem had unsolved appearances before it
  regressed  an unsolved appearance after the first solved one
"""

from __future__ import annotations

import json
import re

from sqlite_utils import Database


from .errors import GcpoError

# The golden rollout never counts as the model solving the problem; NULL flags count as 0.
_K = "ifnull(sum(CASE WHEN is_golden = 1 THEN 0 ELSE correct END), 0)"
_G = "ifnull(sum(is_golden = 1), 0)"
_NOT_GOLDEN = "ifnull(is_golden, 0) = 0"
# Pass-rate buckets for the set view: (label, lower bound inclusive, upper bound exclusive).
BUCKETS = [("0%", 0.0, 1e-12), ("<25%", 1e-12, 0.25), ("<50%", 0.25, 0.5),
           ("<75%", 0.5, 0.75), ("<100%", 0.75, 1.0), ("100%", 1.0, 2.0)]
MAX_CANDIDATES = 20
# evaluation.evaluate_golden grades the golden answers themselves under this model label: a
# check of the grader, not of a model, so it stays out of wrong answers, examples and difficulty.
GOLDEN_CHECK = "golden"
_MODEL_EVAL = f"ifnull(e.model, '') != '{GOLDEN_CHECK}'"


# ----------------------------------------------------------------------------- resolution
def _glob_prefix(ref: str) -> str:
    # GLOB (unlike LIKE) is case-sensitive, so SQLite can answer a prefix from the primary key.
    return re.sub(r"([*?\[])", r"[\1]", ref) + "*"


def user_error(msg: str) -> GcpoError:
    # cli escapes GcpoError messages itself, so ids or search words with brackets print as typed.
    return GcpoError(msg)


def _fit(head: str, items: list[str], total: int | None = None) -> str:
    """`head` then as many items as fit one 80-column line after cli's "error: ", then "+N more"."""
    total = len(items) if total is None else total
    shown: list[str] = []
    for i in items:
        rest = total - len(shown) - 1
        line = "error: " + head + ", ".join(shown + [i]) + (f", +{rest} more" if rest else "")
        if len(line) > 80 and shown:
            break
        shown.append(i)
    rest = total - len(shown)
    return head + ", ".join(shown) + (f", +{rest} more" if rest else "")


def _ambiguous(kind: str, ref: str, ids: list[str]) -> GcpoError:
    count = f"{MAX_CANDIDATES}+" if len(ids) > MAX_CANDIDATES else str(len(ids))
    return user_error(_fit(f"ambiguous {kind} {_clip(ref)}: {count} match: ", ids[:MAX_CANDIDATES]))


def _clip(ref: str, n: int = 24) -> str:
    return repr(ref if len(ref) <= n else ref[: n - 1] + "…")


def _fts_query(text: str) -> str:
    # Quote every word so user text like "12 + 35?" is never parsed as FTS syntax.
    words = re.findall(r"\w+", text)
    return " ".join('"' + w + '"' for w in words)


def resolve_problem(db: Database, ref: str) -> str:
    """Exact id, then a source id from the ingested file, then an id prefix, then full-text."""
    ref = ref.strip()
    if not ref:
        raise user_error("empty problem id; pass an id, an id prefix or words from its text")
    if db.execute("SELECT 1 FROM problems WHERE id = ?", [ref]).fetchone():
        return ref
    ids = [r[0] for r in db.execute(
        "SELECT DISTINCT problem_id FROM set_problems WHERE source_id = ? LIMIT ?",
        [ref, MAX_CANDIDATES])]
    if not ids:
        ids = [r[0] for r in db.execute(
            "SELECT id FROM problems WHERE id GLOB ? ORDER BY id LIMIT ?",
            [_glob_prefix(ref), MAX_CANDIDATES + 1])]
    if not ids and _fts_query(ref):
        ids = [r[0] for r in db.execute(
            "SELECT problems.id FROM problems_fts JOIN problems ON problems.rowid = problems_fts.rowid"
            " WHERE problems_fts MATCH ? ORDER BY rank LIMIT ?",
            [_fts_query(ref), MAX_CANDIDATES + 1])]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise user_error(f"unknown problem {_clip(ref)}: no id, prefix or text matches")
    raise _ambiguous("problem", ref, ids)


def resolve_run(db: Database, ref: str) -> str:
    ref = ref.strip()
    if ref and db.execute("SELECT 1 FROM runs WHERE id = ?", [ref]).fetchone():
        return ref
    ids = [r[0] for r in db.execute(
        "SELECT id FROM runs WHERE id GLOB ? ORDER BY created_at DESC LIMIT ?",
        [_glob_prefix(ref), MAX_CANDIDATES + 1])] if ref else []
    if len(ids) == 1:
        return ids[0]
    if not ids:
        recent = [r[0] for r in db.execute("SELECT id FROM runs ORDER BY created_at DESC LIMIT 6")]
        if not recent:
            raise user_error(f"unknown run {_clip(ref)}: no runs recorded yet")
        raise user_error(_fit(f"unknown run {_clip(ref)}; recent: ", recent))
    raise _ambiguous("run", ref, ids)


def resolve_set(db: Database, ref: str) -> dict:
    ref = ref.strip()
    row = db.execute("SELECT id, name, description FROM problem_sets WHERE name = ?", [ref]).fetchone()
    if not row and ref.isdigit():
        row = db.execute("SELECT id, name, description FROM problem_sets WHERE id = ?", [int(ref)]).fetchone()
    if not row:
        rows = db.execute("SELECT id, name, description FROM problem_sets WHERE name GLOB ? ORDER BY name",
                          [_glob_prefix(ref)]).fetchall()
        if len(rows) > 1:
            raise _ambiguous("set", ref, [r[1] for r in rows])
        row = rows[0] if rows else None
    if not row:
        names = [r[0] for r in db.execute("SELECT name FROM problem_sets ORDER BY name LIMIT 20")]
        if not names:
            raise user_error(f"unknown set {_clip(ref)}: no sets ingested yet")
        raise user_error(_fit(f"unknown set {_clip(ref)}; sets: ", names))
    return {"id": row[0], "name": row[1], "description": row[2]}


# ----------------------------------------------------------------------------- shared pieces
def _rows(db: Database, sql: str, params=()) -> list[dict]:
    cur = db.execute(sql, list(params))
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _loads(text):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text  # keep what was stored rather than hide it


def arc(groups: list[tuple[int, int, int, int]]) -> dict:
    """A problem's story in one run from its (step, k, n, golden) groups, in step order."""
    golden_steps, regressed, first_solved, graduated, failed_before = [], [], None, None, False
    for step, k, _n, g in groups:
        if g:
            golden_steps.append(step)
        if k:
            if first_solved is None:
                first_solved = step
                graduated = step if failed_before else None
        elif first_solved is not None:
            regressed.append(step)
        else:
            failed_before = True
    k_sum = sum(k for _, k, _, _ in groups)
    sampled = sum(n - g for _, _, n, g in groups)  # the model's own samples
    return {
        "appearances": len(groups),
        "first_step": groups[0][0] if groups else None,
        "last_step": groups[-1][0] if groups else None,
        "golden_steps": golden_steps,
        "first_solved_step": first_solved,
        "graduated_step": graduated,
        "regressed_steps": regressed,
        "pass_rate": round(k_sum / sampled, 4) if sampled else None,
        "last_k": groups[-1][1] if groups else None,
        "last_n": groups[-1][2] if groups else None,
    }


def verdict(k: int, n: int) -> str:
    return "solved" if n and k == n else "partial" if k else "failed"


_RUN_COLS = "id, recipe, model, algorithm, data_set, seed, status, steps_planned, last_step, created_at"


# ----------------------------------------------------------------------------- problem view
def problem_history(db: Database, problem_id: str, run_id: str | None = None,
                    full: bool = False) -> dict:
    p = _rows(db, "SELECT id, text, answer, metadata_json, created_at FROM problems WHERE id = ?",
              [problem_id])[0]
    p["metadata"] = _loads(p.pop("metadata_json"))
    p["sets"] = [r[0] for r in db.execute(
        "SELECT ps.name FROM set_problems sp JOIN problem_sets ps ON ps.id = sp.set_id"
        " WHERE sp.problem_id = ? ORDER BY ps.name", [problem_id])]
    golden = _rows(db, "SELECT id, source, final_answer, verified, text FROM golden_answers"
                       " WHERE problem_id = ? ORDER BY verified DESC, created_at", [problem_id])
    for g in golden:
        g["verified"] = bool(g["verified"])

    rfilter, rparams = ("AND run_id = ?", [run_id]) if run_id else ("", [])
    per_run: dict[str, list] = {}
    for rid, step, n, k, g in db.execute(
        f"SELECT run_id, step, count(*), {_K}, {_G} FROM rollouts WHERE problem_id = ? {rfilter}"
        " GROUP BY run_id, step ORDER BY run_id, step", [problem_id, *rparams]):
        per_run.setdefault(rid, []).append((step, k, n, g))
    runs = []
    meta = {r["id"]: r for r in _rows(
        db, f"SELECT {_RUN_COLS} FROM runs WHERE id IN ({','.join('?' * len(per_run))})",
        list(per_run))} if per_run else {}
    for rid, groups in per_run.items():
        m = meta.get(rid, {"id": rid})
        runs.append({
            "run_id": rid,
            "algorithm": m.get("algorithm"), "model": m.get("model"),
            "data_set": m.get("data_set"), "status": m.get("status"),
            "created_at": m.get("created_at"),
            **arc(groups),
            "steps": [{"step": s, "k": k, "n": n, "golden": bool(g)} for s, k, n, g in groups],
        })
    runs.sort(key=lambda r: (r["created_at"] or "", r["run_id"]))

    efilter, eparams = ("AND e.run_id = ?", [run_id]) if run_id else ("", [])
    evals = _rows(db, "SELECT e.id AS evaluation_id, e.model, e.run_id, e.run_step, e.set_name,"
                      " e.status, e.created_at, count(*) AS n, ifnull(sum(er.correct), 0) AS k"
                      " FROM eval_results er JOIN evaluations e ON e.id = er.evaluation_id"
                      f" WHERE er.problem_id = ? {efilter} GROUP BY e.id ORDER BY e.created_at",
                  [problem_id, *eparams])
    for e in evals:
        e["golden_check"] = e["model"] == GOLDEN_CHECK
        e["verdict"] = verdict(e["k"], e["n"])

    # Wrong answers from training and evaluation together: the same misconception shows in both.
    wrong = _rows(db, f"""
        SELECT answer, sum(c) AS count FROM (
          SELECT ifnull(extracted_answer, '') AS answer, count(*) AS c FROM rollouts
           WHERE problem_id = ? AND correct = 0 AND {_NOT_GOLDEN} {rfilter} GROUP BY answer
          UNION ALL
          SELECT ifnull(er.extracted_answer, '') AS answer, count(*) AS c
            FROM eval_results er JOIN evaluations e ON e.id = er.evaluation_id
           WHERE er.problem_id = ? AND er.correct = 0 AND {_MODEL_EVAL} {efilter} GROUP BY answer)
        GROUP BY answer ORDER BY count DESC, answer LIMIT 10""",
        [problem_id, *rparams, problem_id, *eparams])

    top_wrong = wrong[0]["answer"] if wrong else None
    out = {
        "problem": p,
        "run_filter": run_id,  # set when --run limited the history to one run
        "golden_answers": golden,
        "runs": runs,
        "evaluations": evals,
        "wrong_answers": wrong,
        "wrong_example": _example(db, problem_id, False, top_wrong, rfilter, rparams, efilter, eparams),
        "latest_correct": _example(db, problem_id, True, None, rfilter, rparams, efilter, eparams),
    }
    if full:
        out["completions"] = _rows(db, "SELECT run_id, step, sample_index, correct, is_golden,"
                                       " reward, tokens, truncated, extracted_answer, completion"
                                       f" FROM rollouts WHERE problem_id = ? {rfilter}"
                                       " ORDER BY run_id, step, sample_index", [problem_id, *rparams])
        out["eval_completions"] = _rows(
            db, "SELECT er.evaluation_id, er.sample_index, er.correct, er.tokens, er.truncated,"
                " er.extracted_answer, er.completion FROM eval_results er"
                f" JOIN evaluations e ON e.id = er.evaluation_id WHERE er.problem_id = ? {efilter}"
                " ORDER BY e.created_at, er.sample_index", [problem_id, *eparams])
    return out


def _example(db, problem_id, correct, answer, rfilter, rparams, efilter, eparams) -> dict | None:
    """The latest rollout (else evaluation sample) that is correct, or wrong with `answer`."""
    ans_sql, ans_p = ("AND ifnull(extracted_answer, '') = ?", [answer]) if answer is not None else ("", [])
    # `id + 0` keeps SQLite on the problem_id index: ordering by the bare rowid can tempt it
    # into walking the whole table backwards looking for this problem's rows.
    rows = _rows(db, "SELECT 'train' AS source, run_id, step, sample_index, extracted_answer, tokens,"
                     " truncated, completion FROM rollouts WHERE problem_id = ? AND correct = ?"
                     f" AND {_NOT_GOLDEN} {rfilter} {ans_sql} ORDER BY id + 0 DESC LIMIT 1",
                 [problem_id, int(correct), *rparams, *ans_p])
    if rows:
        return rows[0]
    ans_sql = ans_sql.replace("extracted_answer", "er.extracted_answer")
    rows = _rows(db, "SELECT 'eval' AS source, er.evaluation_id, er.sample_index, er.extracted_answer,"
                     " er.tokens, er.truncated, er.completion FROM eval_results er"
                     " JOIN evaluations e ON e.id = er.evaluation_id"
                     f" WHERE er.problem_id = ? AND er.correct = ? AND {_MODEL_EVAL} {efilter} {ans_sql}"
                     " ORDER BY er.id + 0 DESC LIMIT 1", [problem_id, int(correct), *eparams, *ans_p])
    return rows[0] if rows else None


# ----------------------------------------------------------------------------- run view
def run_history(db: Database, run_id: str) -> dict:
    run = _rows(db, "SELECT * FROM runs WHERE id = ?", [run_id])[0]
    run["recipe_json"] = _loads(run["recipe_json"])
    steps = _rows(db, "SELECT * FROM steps WHERE run_id = ? ORDER BY step", [run_id])
    for s in steps:
        s.pop("id", None)
        s.pop("run_id", None)
        s["metrics_json"] = _loads(s.get("metrics_json"))

    # One pass over the run's groups gives both the per-step shares and each problem's arc.
    per_step: dict[int, list[int]] = {}  # step -> [groups, all wrong, injected, k, n]
    problems: dict[str, dict] = {}
    current, groups = None, []
    cur = db.execute(f"SELECT problem_id, step, count(*), {_K}, {_G} FROM rollouts"
                     " WHERE run_id = ? GROUP BY problem_id, step ORDER BY problem_id, step", [run_id])
    for pid, step, n, k, g in cur:
        if pid != current:
            if groups:
                problems[current] = arc(groups)
            current, groups = pid, []
        groups.append((step, k, n, g))
        acc = per_step.setdefault(step, [0, 0, 0, 0, 0])
        acc[0] += 1
        acc[1] += k == 0
        acc[2] += g > 0
        acc[3] += k + g
        acc[4] += n
    if groups:
        problems[current] = arc(groups)

    by_step = {s["step"]: s for s in steps}
    for step, (ng, aw, inj, kk, n) in per_step.items():
        s = by_step.setdefault(step, {"step": step})
        s["groups"] = ng
        s["ga_rate"] = round(inj / ng, 4)
        # The trainer's own figures win; rollouts fill in what a step row lacks.
        if s.get("all_wrong_frac") is None:
            s["all_wrong_frac"] = round(aw / ng, 4)
        if s.get("reward_mean") is None:
            s["reward_mean"] = round(kk / n, 4) if n else None
        if s.get("ga_injections") is None:
            s["ga_injections"] = inj
    steps = sorted(by_step.values(), key=lambda s: s["step"])

    arcs = [{"problem_id": p, **a} for p, a in problems.items()]
    graduated = sorted((a for a in arcs if a["graduated_step"] is not None),
                       key=lambda a: (a["graduated_step"], a["problem_id"]))
    never = sorted((a for a in arcs if a["first_solved_step"] is None),
                   key=lambda a: (-a["appearances"], a["problem_id"]))
    regressed = sorted((a for a in arcs if a["regressed_steps"]),
                       key=lambda a: (-len(a["regressed_steps"]), a["problem_id"]))
    from_start = sorted(a["problem_id"] for a in arcs
                        if a["first_solved_step"] is not None and a["graduated_step"] is None)
    _attach_text(db, graduated + never + regressed)
    evals = _rows(db, "SELECT e.id AS evaluation_id, e.run_step, e.set_name, e.model, e.status,"
                      " e.metrics_json, count(er.id) AS n, ifnull(sum(er.correct), 0) AS k"
                      " FROM evaluations e LEFT JOIN eval_results er ON er.evaluation_id = e.id"
                      " WHERE e.run_id = ? GROUP BY e.id ORDER BY e.run_step, e.created_at", [run_id])
    for e in evals:
        e["metrics_json"] = _loads(e["metrics_json"])
    return {
        "run": run,
        "steps": steps,
        "problems": {
            "seen": len(problems),
            "solved_from_start": from_start,
            "graduated": graduated,
            "never_solved": never,
            "regressed": regressed,
        },
        "evaluations": evals,
    }


def problem_texts(db: Database, ids) -> dict[str, str]:
    ids = list(set(ids))
    texts: dict[str, str] = {}
    for at in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
        chunk = ids[at:at + 500]
        texts.update(db.execute(f"SELECT id, text FROM problems WHERE id IN ({','.join('?' * len(chunk))})",
                                chunk).fetchall())
    return texts


def _attach_text(db: Database, items: list[dict]) -> None:
    texts = problem_texts(db, (i["problem_id"] for i in items))
    for i in items:
        i["text"] = texts.get(i["problem_id"])


# ----------------------------------------------------------------------------- set view
def _bucket(rate: float) -> str:
    return next(label for label, lo, hi in BUCKETS if lo <= rate < hi)


def _distribution(rates: list[float]) -> dict:
    counts = {label: 0 for label, _, _ in BUCKETS}
    for r in rates:
        counts[_bucket(r)] += 1
    return {"problems": len(rates), "buckets": counts,
            "mean_pass_rate": round(sum(rates) / len(rates), 4) if rates else None}


def set_history(db: Database, set_ref: str, run_id: str | None = None, limit: int | None = 10) -> dict:
    s = resolve_set(db, set_ref)
    n_problems = db.execute("SELECT count(*) FROM set_problems WHERE set_id = ?", [s["id"]]).fetchone()[0]
    rfilter, rparams = ("AND run_id = ?", [run_id]) if run_id else ("", [])
    # Inner query: one row per group (problem, run, step); outer: per problem and run.
    per = _rows(db, f"""
        SELECT problem_id, run_id, count(*) AS appearances, sum(k = 0) AS all_wrong,
               sum(g > 0) AS injected, sum(k = 0 AND g = 0) AS wasted, sum(k) AS k, sum(n - g) AS sampled
        FROM (SELECT problem_id, run_id, step, count(*) AS n, {_K} AS k, {_G} AS g FROM rollouts
              WHERE problem_id IN (SELECT problem_id FROM set_problems WHERE set_id = ?) {rfilter}
              GROUP BY problem_id, run_id, step)
        GROUP BY problem_id, run_id""", [s["id"], *rparams])
    efilter, eparams = ("AND e.run_id = ?", [run_id]) if run_id else ("", [])
    ev = _rows(db, "SELECT e.id AS evaluation_id, e.model, e.run_id, e.run_step, er.problem_id,"
                   " count(*) AS n, ifnull(sum(er.correct), 0) AS k FROM evaluations e"
                   " JOIN eval_results er ON er.evaluation_id = e.id"
                   " JOIN set_problems sp ON sp.problem_id = er.problem_id AND sp.set_id = ?"
                   f" WHERE {_MODEL_EVAL} {efilter} GROUP BY e.id, er.problem_id ORDER BY e.created_at",
               [s["id"], *eparams])

    sources: dict[tuple, list[float]] = {}
    stats: dict[str, dict] = {}
    for r in per:
        if r["sampled"]:
            sources.setdefault(("run", r["run_id"]), []).append(r["k"] / r["sampled"])
        t = stats.setdefault(r["problem_id"], {"problem_id": r["problem_id"], "runs": 0, "appearances": 0,
                                               "all_wrong": 0, "injected": 0, "wasted": 0, "k": 0,
                                               "sampled": 0, "eval_k": 0, "eval_n": 0})
        t["runs"] += 1
        for key in ("appearances", "all_wrong", "injected", "wasted", "k", "sampled"):
            t[key] += r[key]
    for r in ev:
        sources.setdefault(("evaluation", r["evaluation_id"]), []).append(r["k"] / r["n"])
        t = stats.setdefault(r["problem_id"], {"problem_id": r["problem_id"], "runs": 0, "appearances": 0,
                                               "all_wrong": 0, "injected": 0, "wasted": 0, "k": 0,
                                               "sampled": 0, "eval_k": 0, "eval_n": 0})
        t["eval_k"] += r["k"]
        t["eval_n"] += r["n"]

    run_meta = {r["id"]: r for r in _rows(db, f"SELECT {_RUN_COLS} FROM runs")}
    eval_meta = {r["evaluation_id"]: r for r in ev}
    distribution = []
    for (kind, sid), rates in sources.items():
        m = run_meta.get(sid, {}) if kind == "run" else eval_meta.get(sid, {})
        distribution.append({"kind": kind, "id": sid, "model": m.get("model"),
                             "algorithm": m.get("algorithm"), "run_step": m.get("run_step"),
                             "created_at": m.get("created_at"), **_distribution(rates)})
    distribution.sort(key=lambda d: (d["kind"] != "run", d["created_at"] or "", d["id"]))
    all_rates = [t["k"] / t["sampled"] for t in stats.values() if t["sampled"]]
    if all_rates:
        distribution.append({"kind": "all runs", "id": None, **_distribution(all_rates)})

    golden = dict(db.execute(
        "SELECT problem_id, max(verified) FROM golden_answers WHERE problem_id IN"
        " (SELECT problem_id FROM set_problems WHERE set_id = ?) GROUP BY problem_id", [s["id"]]).fetchall())
    for t in stats.values():
        t["pass_rate"] = round(t["k"] / t["sampled"], 4) if t["sampled"] else None
        t["eval_pass_rate"] = round(t["eval_k"] / t["eval_n"], 4) if t["eval_n"] else None
        v = golden.get(t["problem_id"])
        t["golden"] = "verified" if v == 1 else "none" if v is None else "unverified"
    # A problem needs a golden answer when its groups came back all wrong (or it fails in
    # evaluation) and there is no verified GA to inject: those groups teach GCPO nothing.
    need = [t for t in stats.values() if t["golden"] != "verified"
            and (t["all_wrong"] or (t["eval_n"] and not t["eval_k"]))]
    need.sort(key=lambda t: (-t["wasted"], -t["all_wrong"], t["pass_rate"] if t["pass_rate"] is not None
                             else (t["eval_pass_rate"] or 0), t["problem_id"]))
    need_total = len(need)
    need = need[:limit] if limit else need
    _attach_text(db, need)
    verified = sum(1 for v in golden.values() if v == 1)
    return {
        "set": {**s, "problems": n_problems},
        "golden_coverage": {"verified": verified, "unverified_only": len(golden) - verified,
                            "none": n_problems - len(golden)},
        "measured": len(stats),
        "unseen": n_problems - len(stats),
        "distribution": distribution,
        "need_golden_total": need_total,
        "need_golden": need,
    }


# ----------------------------------------------------------------------------- picker lists
def list_runs(db: Database, limit: int = 20) -> list[dict]:
    return _rows(db, f"SELECT {_RUN_COLS} FROM runs ORDER BY created_at DESC, id DESC LIMIT ?", [limit])
