"""The read-only aggregates behind `gcpo inspect`: pure functions from a Database to plain data.

Every figure comes from aggregated SQL (GROUP BY run/problem/step) answered from the covering
indexes of m002, so a problem with 10,000 rollouts or a run with 600,000 costs one index range
scan rather than a row fetch per rollout. The dicts returned here are exactly what `--json`
prints; render.py draws them.

Definitions, per run, over a problem's appearances (its groups) ordered by step:
  k of n     correct rollouts among the group's n sampled ones (G of the recipe): an injected
             golden answer (GA) is an extra row (train.go_gold), in neither
  solved     k >= 1
  golden     a GA was injected into the group (every sampled answer was wrong)
  graduated  the first solved step, when the problem had unsolved appearances before it
  regressed  an unsolved appearance after the first solved one
"""

from __future__ import annotations

from sqlite_utils import Database

from .db import loads as _loads
from .db import rows_in
from .problems import problem_texts
from .resolve import resolve_set
from .runs import run_status

# The golden rollout never counts as the model solving the problem; NULL flags count as 0.
_K = "ifnull(sum(CASE WHEN is_golden = 1 THEN 0 ELSE correct END), 0)"
_G = "ifnull(sum(is_golden = 1), 0)"
_NOT_GOLDEN = "ifnull(is_golden, 0) = 0"
# Pass-rate buckets for the set view: (label, lower bound inclusive, upper bound exclusive).
BUCKETS = [("0%", 0.0, 1e-12), ("<25%", 1e-12, 0.25), ("<50%", 0.25, 0.5),
           ("<75%", 0.5, 0.75), ("<100%", 0.75, 1.0), ("100%", 1.0, 2.0)]
# evaluation.evaluate_golden grades the golden answers themselves under this model label: a
# check of the grader, not of a model, so it stays out of wrong answers, examples and difficulty.
GOLDEN_CHECK = "golden"
_MODEL_EVAL = f"ifnull(e.model, '') != '{GOLDEN_CHECK}'"


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
        "last_n": groups[-1][2] - groups[-1][3] if groups else None,
    }


def verdict(k: int, n: int) -> str:
    return "solved" if n and k == n else "partial" if k else "failed"


_RUN_COLS = "id, recipe, model, algorithm, set_name, seed, status, steps_planned, last_step, out_dir, created_at"


# ----------------------------------------------------------------------------- problem view
def problem_history(db: Database, problem_id: str, run_id: str | None = None,
                    full: bool = False) -> dict:
    p = _problem_row(db, problem_id)
    golden = _golden_answers(db, problem_id)
    rfilter, rparams = ("AND run_id = ?", [run_id]) if run_id else ("", [])
    runs = _problem_runs(db, problem_id, rfilter, rparams)
    efilter, eparams = ("AND e.run_id = ?", [run_id]) if run_id else ("", [])
    evals = _problem_evaluations(db, problem_id, efilter, eparams)
    wrong = _wrong_answers(db, problem_id, rfilter, rparams, efilter, eparams)
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
        out["completions"], out["eval_completions"] = _completions(db, problem_id, rfilter, rparams,
                                                                   efilter, eparams)
    return out


def _problem_row(db: Database, problem_id: str) -> dict:
    """Returns the problem's row, with its metadata decoded and the names of its sets."""
    p = list(db.query("SELECT id, text, answer, metadata_json, created_at FROM problems WHERE id = ?",
              [problem_id]))[0]
    p["metadata"] = _loads(p.pop("metadata_json"))
    p["sets"] = [r[0] for r in db.execute(
        "SELECT ps.name FROM set_problems sp JOIN problem_sets ps ON ps.id = sp.set_id"
        " WHERE sp.problem_id = ? ORDER BY ps.name", [problem_id])]
    return p


def _golden_answers(db: Database, problem_id: str) -> list[dict]:
    """Returns the problem's golden answers, verified ones first."""
    golden = list(db.query("SELECT id, ifnull(source_file, model) AS source, final_answer, verified, text"
                           " FROM golden_answers WHERE problem_id = ? ORDER BY verified DESC, created_at",
                           [problem_id]))
    for g in golden:
        g["verified"] = bool(g["verified"])
    return golden


def _problem_runs(db: Database, problem_id: str, rfilter: str, rparams: list) -> list[dict]:
    """Returns per run that sampled the problem its metadata, arc and steps, oldest run first."""
    per_run: dict[str, list] = {}
    for rid, step, n, k, g in db.execute(
        f"SELECT run_id, step, count(*), {_K}, {_G} FROM rollouts WHERE problem_id = ? {rfilter}"
        " GROUP BY run_id, step ORDER BY run_id, step", [problem_id, *rparams]):
        per_run.setdefault(rid, []).append((step, k, n, g))
    runs = []
    meta = {r["id"]: r for r in rows_in(db, f"SELECT {_RUN_COLS} FROM runs WHERE id IN ({{ids}})", per_run)}
    for rid, groups in per_run.items():
        m = meta.get(rid, {"id": rid})
        runs.append({
            "run_id": rid,
            "algorithm": m.get("algorithm"), "model": m.get("model"),
            "set_name": m.get("set_name"), "status": run_status(m),
            "created_at": m.get("created_at"),
            **arc(groups),
            "steps": [{"step": s, "k": k, "n": n - g, "golden": bool(g)} for s, k, n, g in groups],
        })
    runs.sort(key=lambda r: (r["created_at"] or "", r["run_id"]))
    return runs


def _problem_evaluations(db: Database, problem_id: str, efilter: str, eparams: list) -> list[dict]:
    """Returns per evaluation of the problem its k of n and verdict, oldest first."""
    evals = list(db.query("SELECT e.id AS evaluation_id, e.model, e.run_id, e.run_step, e.set_name,"
                      " e.status, e.created_at, count(*) AS n, ifnull(sum(er.correct), 0) AS k"
                      " FROM eval_results er JOIN evaluations e ON e.id = er.evaluation_id"
                      f" WHERE er.problem_id = ? {efilter} GROUP BY e.id ORDER BY e.created_at",
                  [problem_id, *eparams]))
    for e in evals:
        e["golden_check"] = e["model"] == GOLDEN_CHECK
        e["verdict"] = verdict(e["k"], e["n"])
    return evals


def _wrong_answers(db: Database, problem_id: str, rfilter: str, rparams: list, efilter: str,
                   eparams: list) -> list[dict]:
    """Returns the ten most common wrong answers with their counts."""
    # Wrong answers from training and evaluation together: the same misconception shows in both.
    return list(db.query(f"""
        SELECT answer, sum(c) AS count FROM (
          SELECT ifnull(extracted_answer, '') AS answer, count(*) AS c FROM rollouts
           WHERE problem_id = ? AND correct = 0 AND {_NOT_GOLDEN} {rfilter} GROUP BY answer
          UNION ALL
          SELECT ifnull(er.extracted_answer, '') AS answer, count(*) AS c
            FROM eval_results er JOIN evaluations e ON e.id = er.evaluation_id
           WHERE er.problem_id = ? AND er.correct = 0 AND {_MODEL_EVAL} {efilter} GROUP BY answer)
        GROUP BY answer ORDER BY count DESC, answer LIMIT 10""",
        [problem_id, *rparams, problem_id, *eparams]))


def _example(db, problem_id, correct, answer, rfilter, rparams, efilter, eparams) -> dict | None:
    """The latest rollout (else evaluation sample) that is correct, or wrong with `answer`."""
    ans_sql, ans_p = ("AND ifnull(extracted_answer, '') = ?", [answer]) if answer is not None else ("", [])
    # `id + 0` keeps SQLite on the problem_id index: ordering by the bare rowid can tempt it
    # into walking the whole table backwards looking for this problem's rows.
    rows = list(db.query("SELECT 'train' AS source, run_id, step, sample_index, extracted_answer, completion_tokens,"
                     " truncated, completion FROM rollouts WHERE problem_id = ? AND correct = ?"
                     f" AND {_NOT_GOLDEN} {rfilter} {ans_sql} ORDER BY id + 0 DESC LIMIT 1",
                 [problem_id, int(correct), *rparams, *ans_p]))
    if rows:
        return rows[0]
    ans_sql = ans_sql.replace("extracted_answer", "er.extracted_answer")
    rows = list(db.query("SELECT 'eval' AS source, er.evaluation_id, er.sample_index, er.extracted_answer,"
                     " er.completion_tokens, er.truncated, er.completion FROM eval_results er"
                     " JOIN evaluations e ON e.id = er.evaluation_id"
                     f" WHERE er.problem_id = ? AND er.correct = ? AND {_MODEL_EVAL} {efilter} {ans_sql}"
                     " ORDER BY er.id + 0 DESC LIMIT 1", [problem_id, int(correct), *eparams, *ans_p]))
    return rows[0] if rows else None


def _completions(db, problem_id, rfilter, rparams, efilter, eparams) -> tuple[list[dict], list[dict]]:
    """Returns every training rollout and every evaluation sample of the problem, in order."""
    train = list(db.query("SELECT run_id, step, sample_index, correct, is_golden,"
                          " reward, completion_tokens, truncated, extracted_answer, completion"
                          f" FROM rollouts WHERE problem_id = ? {rfilter}"
                          " ORDER BY run_id, step, sample_index", [problem_id, *rparams]))
    evals = list(db.query(
        "SELECT er.evaluation_id, er.sample_index, er.correct, er.completion_tokens, er.truncated,"
        " er.extracted_answer, er.completion FROM eval_results er"
        f" JOIN evaluations e ON e.id = er.evaluation_id WHERE er.problem_id = ? {efilter}"
        " ORDER BY e.created_at, er.sample_index", [problem_id, *eparams]))
    return train, evals


# ----------------------------------------------------------------------------- run view
def run_history(db: Database, run_id: str) -> dict:
    run = list(db.query("SELECT * FROM runs WHERE id = ?", [run_id]))[0]
    run["recipe_json"] = _loads(run["recipe_json"])
    run["status"] = run_status(run)
    steps = _step_rows(db, run_id)
    per_step, problems = _scan_groups(db, run_id)
    return {
        "run": run,
        "steps": _merge_step_counts(steps, per_step),
        "problems": _run_problems(db, problems),
        "evaluations": _run_evaluations(db, run_id),
    }


def _step_rows(db: Database, run_id: str) -> list[dict]:
    """Returns the trainer's step rows of the run, in step order, every metric the step recorded
    at one level: its column, else its metrics_json (where a metric without a column lives)."""
    steps = list(db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY step", [run_id]))
    for s in steps:
        s.pop("id", None)
        s.pop("run_id", None)
        extra = _loads(s.pop("metrics_json", None)) or {}
        s.update({k: v for k, v in extra.items() if s.get(k) is None})
    return steps


def _scan_groups(db: Database, run_id: str) -> tuple[dict[int, list[int]], dict[str, dict]]:
    """Returns per step [groups, all wrong, injected, k, n], and per problem its arc."""
    # One pass over the run's groups gives both the per-step shares and each problem's arc.
    per_step: dict[int, list[int]] = {}
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
    return per_step, problems


def _merge_step_counts(steps: list[dict], per_step: dict[int, list[int]]) -> list[dict]:
    """Returns the step rows, with figures from the rollouts added, in step order."""
    by_step = {s["step"]: s for s in steps}
    for step, (ng, aw, inj, kk, n) in per_step.items():
        s = by_step.setdefault(step, {"step": step})
        s["groups"] = ng
        s["golden_rate"] = round(inj / ng, 4)
        # The trainer's own figures win; rollouts fill in what a step row lacks.
        if s.get("all_wrong_frac") is None:
            s["all_wrong_frac"] = round(aw / ng, 4)
        if s.get("reward_mean") is None:
            s["reward_mean"] = round(kk / n, 4) if n else None
        if s.get("golden_injections") is None:
            s["golden_injections"] = inj
    return sorted(by_step.values(), key=lambda s: s["step"])


def _run_problems(db: Database, problems: dict[str, dict]) -> dict:
    """Returns the run's problems as solved from the start, graduated, never solved, regressed."""
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
    return {
        "seen": len(problems),
        "solved_from_start": from_start,
        "graduated": graduated,
        "never_solved": never,
        "regressed": regressed,
    }


def _run_evaluations(db: Database, run_id: str) -> list[dict]:
    """Returns the run's evaluations with their k of n, by run step, metrics decoded."""
    evals = list(db.query("SELECT e.id AS evaluation_id, e.run_step, e.set_name, e.model, e.status,"
                      " e.metrics_json, count(er.id) AS n, ifnull(sum(er.correct), 0) AS k"
                      " FROM evaluations e LEFT JOIN eval_results er ON er.evaluation_id = e.id"
                      " WHERE e.run_id = ? GROUP BY e.id ORDER BY e.run_step, e.created_at", [run_id]))
    for e in evals:
        e["metrics_json"] = _loads(e["metrics_json"])
    return evals


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
    per = _set_groups(db, s["id"], rfilter, rparams)
    efilter, eparams = ("AND e.run_id = ?", [run_id]) if run_id else ("", [])
    ev = _set_evaluations(db, s["id"], efilter, eparams)
    sources, stats = _pass_counts(per, ev)
    distribution = _difficulty(db, sources, stats, ev)
    golden = _golden_by_problem(db, s["id"])
    _add_rates_and_golden(stats, golden)
    need_total, need = _need_golden(db, stats, limit)
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


def _set_groups(db: Database, set_id: int, rfilter: str, rparams: list) -> list[dict]:
    """Returns per problem of the set and run its appearances, all-wrong, injected and k counts."""
    # Inner query: one row per group (problem, run, step); outer: per problem and run.
    return list(db.query(f"""
        SELECT problem_id, run_id, count(*) AS appearances, sum(k = 0) AS all_wrong,
               sum(g > 0) AS injected, sum(k = 0 AND g = 0) AS wasted, sum(k) AS k, sum(n - g) AS sampled
        FROM (SELECT problem_id, run_id, step, count(*) AS n, {_K} AS k, {_G} AS g FROM rollouts
              WHERE problem_id IN (SELECT problem_id FROM set_problems WHERE set_id = ?) {rfilter}
              GROUP BY problem_id, run_id, step)
        GROUP BY problem_id, run_id""", [set_id, *rparams]))


def _set_evaluations(db: Database, set_id: int, efilter: str, eparams: list) -> list[dict]:
    """Returns per model evaluation and problem of the set its k of n, oldest evaluation first."""
    return list(db.query("SELECT e.id AS evaluation_id, e.model, e.run_id, e.run_step, er.problem_id,"
                     " count(*) AS n, ifnull(sum(er.correct), 0) AS k FROM evaluations e"
                     " JOIN eval_results er ON er.evaluation_id = e.id"
                     " JOIN set_problems sp ON sp.problem_id = er.problem_id AND sp.set_id = ?"
                     f" WHERE {_MODEL_EVAL} {efilter} GROUP BY e.id, er.problem_id ORDER BY e.created_at",
                 [set_id, *eparams]))


def _pass_counts(per: list[dict], ev: list[dict]) -> tuple[dict[tuple, list[float]], dict[str, dict]]:
    """Returns the pass rates per source (run or evaluation), and the summed counts per problem."""
    sources: dict[tuple, list[float]] = {}
    stats: dict[str, dict] = {}
    for r in per:
        if r["sampled"]:
            sources.setdefault(("run", r["run_id"]), []).append(r["k"] / r["sampled"])
        t = _problem_stats(stats, r["problem_id"])
        t["runs"] += 1
        for key in ("appearances", "all_wrong", "injected", "wasted", "k", "sampled"):
            t[key] += r[key]
    for r in ev:
        sources.setdefault(("evaluation", r["evaluation_id"]), []).append(r["k"] / r["n"])
        t = _problem_stats(stats, r["problem_id"])
        t["eval_k"] += r["k"]
        t["eval_n"] += r["n"]
    return sources, stats


def _problem_stats(stats: dict[str, dict], problem_id: str) -> dict:
    """Returns the problem's counts in `stats`, added as zeros when it has none yet."""
    return stats.setdefault(problem_id, {"problem_id": problem_id, "runs": 0, "appearances": 0,
                                         "all_wrong": 0, "injected": 0, "wasted": 0, "k": 0,
                                         "sampled": 0, "eval_k": 0, "eval_n": 0})


def _difficulty(db: Database, sources: dict[tuple, list[float]], stats: dict[str, dict],
                ev: list[dict]) -> list[dict]:
    """Returns the pass-rate distribution per run, then per evaluation, then over all runs."""
    run_meta = {r["id"]: r for r in list(db.query(f"SELECT {_RUN_COLS} FROM runs"))}
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
    return distribution


def _golden_by_problem(db: Database, set_id: int) -> dict[str, int]:
    """Returns per problem of the set that has golden answers 1 if one is verified, else 0."""
    return dict(db.execute(
        "SELECT problem_id, max(verified) FROM golden_answers WHERE problem_id IN"
        " (SELECT problem_id FROM set_problems WHERE set_id = ?) GROUP BY problem_id",
        [set_id]).fetchall())


def _add_rates_and_golden(stats: dict[str, dict], golden: dict[str, int]) -> None:
    """Returns nothing; gives each problem's stats its pass rates and golden-answer status."""
    for t in stats.values():
        t["pass_rate"] = round(t["k"] / t["sampled"], 4) if t["sampled"] else None
        t["eval_pass_rate"] = round(t["eval_k"] / t["eval_n"], 4) if t["eval_n"] else None
        v = golden.get(t["problem_id"])
        t["golden"] = "verified" if v == 1 else "none" if v is None else "unverified"


def _need_golden(db: Database, stats: dict[str, dict], limit: int | None) -> tuple[int, list[dict]]:
    """Returns how many problems need a golden answer, and the first `limit` of them, worst first."""
    # A problem needs a golden answer when its groups came back all wrong (or it fails in
    # evaluation) and there is no verified GA to inject: those groups teach GCPO nothing.
    need = [t for t in stats.values() if t["golden"] != "verified"
            and (t["all_wrong"] or (t["eval_n"] and not t["eval_k"]))]
    need.sort(key=lambda t: (-t["wasted"], -t["all_wrong"], t["pass_rate"] if t["pass_rate"] is not None
                             else (t["eval_pass_rate"] or 0), t["problem_id"]))
    need_total = len(need)
    need = need[:limit] if limit else need
    _attach_text(db, need)
    return need_total, need
