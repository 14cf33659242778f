"""Schema migrations: append-only. Never edit a migration once it has landed; add m002_... instead.

One name per knob everywhere: the step metrics below are the same names the trainer logs and
`gcpo inspect` plots.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("gcpo")

# Per-step metrics recorded by the trainer (see docs: "What every step must record").
STEP_METRICS = [
    "reward_mean",
    "all_wrong_frac",
    "all_correct_frac",
    "mixed_frac",
    "ga_injections",
    "ga_too_long",
    "ga_logp_mean",
    "clip_frac",
    "completion_len_mean",
    "truncation_rate",
    "grad_norm",
    "loss",
    "lr",
    "gen_s",
    "score_s",
    "update_s",
    "tokens_per_s",
]


@migrations()
def m001_initial(db: Database) -> None:
    db["problems"].create(
        {"id": str, "text": str, "answer": str, "metadata_json": str, "created_at": str},
        pk="id",
    )
    db["problem_sets"].create(
        {"id": int, "name": str, "description": str, "created_at": str}, pk="id"
    )
    db["problem_sets"].create_index(["name"], unique=True)
    # A problem can belong to several sets; source_id/position keep the file's own id and order.
    db["set_problems"].create(
        {"set_id": int, "problem_id": str, "position": int, "source_id": str},
        pk=("set_id", "problem_id"),
        foreign_keys=[("set_id", "problem_sets", "id"), ("problem_id", "problems", "id")],
    )
    db["set_problems"].create_index(["problem_id"])
    db["ingests"].create(
        {
            "id": int,
            "set_id": int,
            "source": str,
            "fingerprint": str,
            "rows_read": int,
            "added": int,
            "present": int,
            "rejected": int,
            "golden_verified": int,
            "golden_total": int,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("set_id", "problem_sets", "id")],
    )
    # Several golden answers per problem, each with where it came from and whether its final
    # answer verified against the problem's answer.
    db["golden_answers"].create(
        {
            "id": str,
            "problem_id": str,
            "text": str,
            "final_answer": str,
            "source": str,
            "verified": int,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("problem_id", "problems", "id")],
    )
    db["golden_answers"].create_index(["problem_id"])
    db["runs"].create(
        {
            "id": str,
            "recipe": str,
            "recipe_json": str,
            "model": str,
            "algorithm": str,
            "data_set": str,
            "seed": int,
            "status": str,
            "steps_planned": int,
            "last_step": int,
            "checkpoint_step": int,
            "out_dir": str,
            "error": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
    )
    step_cols = {"id": int, "run_id": str, "step": int}
    step_cols.update({name: float for name in STEP_METRICS})
    step_cols.update({"metrics_json": str, "created_at": str})
    db["steps"].create(step_cols, pk="id", foreign_keys=[("run_id", "runs", "id")])
    db["steps"].create_index(["run_id", "step"], unique=True)
    db["rollouts"].create(
        {
            "id": int,
            "run_id": str,
            "step": int,
            "problem_id": str,
            "sample_index": int,
            "completion": str,
            "extracted_answer": str,
            "reward": float,
            "correct": int,
            "tokens": int,
            "truncated": int,
            "is_golden": int,
            "advantage": float,
            "seq_ratio": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id"), ("problem_id", "problems", "id")],
    )
    db["rollouts"].create_index(["problem_id", "run_id", "step"])
    db["rollouts"].create_index(["run_id", "step"])
    db["evaluations"].create(
        {
            "id": str,
            "model": str,
            "run_id": str,
            "run_step": int,
            "set_name": str,
            "params_json": str,
            "metrics_json": str,
            "status": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
    )
    db["eval_results"].create(
        {
            "id": int,
            "evaluation_id": str,
            "problem_id": str,
            "sample_index": int,
            "completion": str,
            "extracted_answer": str,
            "correct": int,
            "tokens": int,
            "truncated": int,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("evaluation_id", "evaluations", "id"), ("problem_id", "problems", "id")],
    )
    db["eval_results"].create_index(["problem_id"])
    db["eval_results"].create_index(["evaluation_id", "problem_id"])
    # Full-text search over problem text, kept in sync by triggers.
    db["problems"].enable_fts(["text"], create_triggers=True)


@migrations()
def m002_inspect_indexes(db: Database) -> None:
    # Covering indexes for `gcpo inspect` (issue 5): its per-step aggregates read only these
    # columns, so SQLite groups a problem's (or a run's) rollouts by step straight from the
    # index, in order, without fetching a row per rollout. Cheap for the trainer: a step
    # writes a few hundred rollouts.
    db["rollouts"].create_index(
        ["problem_id", "run_id", "step", "is_golden", "correct"], if_not_exists=True
    )
    db["rollouts"].create_index(
        ["run_id", "problem_id", "step", "is_golden", "correct"], if_not_exists=True
    )
    # `gcpo inspect --problem` also accepts the id a problem had in its source file.
    db["set_problems"].create_index(["source_id"], if_not_exists=True)
