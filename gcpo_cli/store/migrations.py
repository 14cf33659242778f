"""Schema migrations: append-only. Never change what a landed migration does; add m00N_... instead.

Each migration states its columns literally, so that nothing edited elsewhere (a list of metric
names, a dataclass) can change what an applied migration means. tests/test_db.py compares a
fresh database with the literal schema the migrations below produce.
"""

from __future__ import annotations

import json

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("gcpo")

@migrations()
def m001_initial(db: Database) -> None:
    # Long because it is the schema, every column written out (the module docstring says why).
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
    # (Until m003 these columns came from a list in this file; written out, they are the same.)
    db["steps"].create(
        {
            "id": int,
            "run_id": str,
            "step": int,
            "reward_mean": float,
            "all_wrong_frac": float,
            "all_correct_frac": float,
            "mixed_frac": float,
            "ga_injections": float,
            "ga_too_long": float,
            "ga_logp_mean": float,
            "clip_frac": float,
            "completion_len_mean": float,
            "truncation_rate": float,
            "grad_norm": float,
            "loss": float,
            "lr": float,
            "gen_s": float,
            "score_s": float,
            "update_s": float,
            "tokens_per_s": float,
            "metrics_json": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
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


# m003: one name per concept (issue 8), from recipe key to column to flag to log line.
_M003_COLUMNS = {
    "runs": {"data_set": "set_name"},
    "steps": {
        "ga_injections": "golden_injections",
        "ga_too_long": "golden_too_long",
        "ga_logp_mean": "golden_logp_mean",
        "completion_len_mean": "completion_tokens_mean",
    },
    "rollouts": {"tokens": "completion_tokens"},
    "eval_results": {"tokens": "completion_tokens"},
}
_M003_RECIPE_KEYS = {"data": "set_name", "all_correct": "zero_variance"}
_M003_STEP_KEYS = {**_M003_COLUMNS["steps"]}
_M003_EVAL_KEYS = {"mean_tokens": "completion_tokens_mean"}


def _rename_json_keys(db: Database, table: str, column: str, renames: dict) -> None:
    for rowid, text in db.execute(f"SELECT rowid, [{column}] FROM [{table}] WHERE [{column}] IS NOT NULL").fetchall():
        try:
            obj = json.loads(text)
        except ValueError:
            continue  # stored as it came; nothing to rename
        if isinstance(obj, dict) and any(k in obj for k in renames):
            obj = {renames.get(k, k): v for k, v in obj.items()}
            db.execute(f"UPDATE [{table}] SET [{column}] = ? WHERE rowid = ?",
                       [json.dumps(obj, sort_keys=True, ensure_ascii=False), rowid])


@migrations()
def m003_one_name_per_concept(db: Database) -> None:
    # ALTER TABLE ... RENAME COLUMN renames in place (indexes follow), where sqlite-utils'
    # transform() would copy every rollout of every run into a new table.
    for table, columns in _M003_COLUMNS.items():
        for old, new in columns.items():
            db.execute(f"ALTER TABLE [{table}] RENAME COLUMN [{old}] TO [{new}]")
    db.execute("UPDATE evaluations SET status = 'completed' WHERE status = 'done'")
    _rename_json_keys(db, "runs", "recipe_json", _M003_RECIPE_KEYS)
    _rename_json_keys(db, "steps", "metrics_json", _M003_STEP_KEYS)
    _rename_json_keys(db, "evaluations", "metrics_json", _M003_EVAL_KEYS)


@migrations()
def m004_ratio_and_updates(db: Database) -> None:
    # The PPO schedule (issue 9): per step, the sequence ratios seen by the updates and how many
    # optimiser updates ran.
    for column in ("ratio_mean", "ratio_min", "ratio_max", "optimizer_updates"):
        db.execute(f"ALTER TABLE steps ADD COLUMN [{column}] REAL")


@migrations()
def m005_eval_prompts(db: Database) -> None:
    # The rendered prompt of every evaluation sample (issue 13), so that a score can be traced
    # to the exact text the model saw and exported for another harness to re-grade. Stored once
    # per distinct text (id: sha256 of the text, as problems are), referenced from each sample.
    db["prompts"].create({"id": str, "text": str, "created_at": str}, pk="id")
    db.execute("ALTER TABLE eval_results ADD COLUMN [prompt_id] TEXT REFERENCES prompts(id)")


@migrations()
def m006_run_environment(db: Database) -> None:
    # Where a run ran and at which precision "auto" resolved to (issue 16): CPU kind, torch
    # version, threads, bf16 or fp32 and why. A figure is only honest next to its machine.
    db.execute("ALTER TABLE runs ADD COLUMN [environment_json] TEXT")


@migrations()
def m007_golden_provenance(db: Database) -> None:
    # Golden answers made by `gcpo golden` (issue 15): several candidates per problem, where each
    # came from, and which one is used.
    # One row per `gcpo golden generate`, resumed like an evaluation (same set, teacher, settings).
    db["golden_generations"].create(
        {
            "id": str,
            "set_name": str,
            "teacher": str,
            "params_json": str,
            "metrics_json": str,
            "status": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
    )
    # origin: "dataset" (ingest) or "teacher" (generated by a teacher, or imported by
    # `gcpo golden import`), the values of the recipe key golden_source; existing rows, and rows
    # ingest writes without naming it, are dataset ones. active: the candidate chosen among its
    # problem's candidates of the same origin (gcpo_cli/golden.py states the rule). model and
    # params_json: the teacher and its settings, or the imported file; completion_tokens: the
    # teacher's own count; generation_id: the `gcpo golden generate` that made it.
    db.execute("ALTER TABLE golden_answers ADD COLUMN [origin] TEXT NOT NULL DEFAULT 'dataset'")
    db.execute("ALTER TABLE golden_answers ADD COLUMN [active] INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE golden_answers ADD COLUMN [model] TEXT")
    db.execute("ALTER TABLE golden_answers ADD COLUMN [params_json] TEXT")
    db.execute("ALTER TABLE golden_answers ADD COLUMN [completion_tokens] INTEGER")
    db.execute("ALTER TABLE golden_answers ADD COLUMN [generation_id] TEXT REFERENCES golden_generations(id)")
    # One row per problem a generation tried, written with its candidates: what a resumed
    # generation skips, and the teacher's success rate (correct of samples) per problem.
    db["golden_attempts"].create(
        {
            "id": int,
            "generation_id": str,
            "problem_id": str,
            "samples": int,
            "correct": int,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("generation_id", "golden_generations", "id"), ("problem_id", "problems", "id")],
    )
    db["golden_attempts"].create_index(["generation_id", "problem_id"], unique=True)


@migrations()
def m008_rollout_policy(db: Database) -> None:
    # Rollout engines (issue 11): which policy sampled each rollout (the training step whose
    # update made it; 0 = the initial adapter) and the sampler's own log-prob of each completion
    # token (little-endian float32, 4 bytes a token; NULL for golden answers and greedy sampling).
    # Every rollout recorded before this sampled from the policy of the step before its own (the
    # trainer re-merged its sampler after every update), so that is filled in.
    db.execute("ALTER TABLE rollouts ADD COLUMN [policy_version] INTEGER")
    db.execute("ALTER TABLE rollouts ADD COLUMN [sampler_logprobs] BLOB")
    db.execute("UPDATE rollouts SET policy_version = step - 1 WHERE ifnull(is_golden, 0) = 0")


@migrations()
def m009_golden_source_file(db: Database) -> None:
    # One name per concept (issue 21 item 5). `source` held "dataset:FILE" (ingest), "import:FILE"
    # (`gcpo golden import`) or "teacher:MODEL" (`gcpo golden generate`): the origin column's
    # value and the model column's again, glued to the file. It keeps the file alone, named for
    # what it is; a generated answer was read from no file (its teacher is in `model`).
    db.execute("UPDATE golden_answers SET source = CASE"
               " WHEN source GLOB 'dataset:*' THEN substr(source, 9)"
               " WHEN source GLOB 'import:*' THEN substr(source, 8)"
               " WHEN source GLOB 'teacher:*' THEN NULL ELSE source END")
    db.execute("ALTER TABLE golden_answers RENAME COLUMN [source] TO [source_file]")
    # The recipe key golden_source is golden_origin now (recipe.RENAMED_KEYS still reads the old
    # one): stored recipes say the new name, as m003 did for its keys (keys stay sorted, as
    # store.dumps writes them).
    _rename_json_keys(db, "runs", "recipe_json", {"golden_source": "golden_origin"})


@migrations()
def m010_golden_derived_from(db: Database) -> None:
    # A golden answer ingest built from another (issue 25 item 8: a worked solution that states no
    # final answer, completed with its row's; ingest.py): the one it was built from. Both stay;
    # the built one is verified like any other and stands for the original where it verified.
    db.execute("ALTER TABLE golden_answers ADD COLUMN [derived_from] TEXT REFERENCES golden_answers(id)")
    db.execute("CREATE INDEX [idx_golden_answers_derived_from] ON [golden_answers] ([derived_from])")


# gcpo 0.4's flat recipe keys and the section each moved to in 0.5 (issue 21), as they were
# then: a migration keeps its own copy, whatever recipe.py says later.
_M011_SECTIONS = {
    "generation": ("problems_per_step", "samples_per_problem", "max_new_tokens", "temperature", "top_p", "prompt",
                   "prompt_template", "system_prompt", "engine", "rollout_server"),
    "golden": ("golden", "golden_replace", "golden_origin", "golden_too_long", "golden_weighting",
               "golden_template"),
    "loss": ("ratio_level", "loss_agg", "eps_low", "eps_high", "scale_rewards", "zero_variance", "mini_batches",
             "ppo_epochs", "tis_cap", "dynamic_sampling", "max_resample_rounds", "overlong_buffer",
             "overlong_penalty"),
    "optimizer": ("lr", "lr_schedule", "warmup_steps", "weight_decay", "max_grad_norm", "micro_batch",
                  "micro_batch_tokens"),
}
_M011_GOLDEN_KEYS = {"golden": "enabled", "golden_replace": "replace", "golden_origin": "origin",
                     "golden_too_long": "too_long", "golden_weighting": "weighting", "golden_template": "template"}


@migrations()
def m011_recipe_sections(db: Database) -> None:
    # The recipe in sections (issue 21): a stored run's recipe takes the shape recipe.Recipe has
    # now, so whatever reads it as JSON (the model card, `eval --run`) reads one shape. The old
    # golden: on|off is golden.enabled: true|false.
    for rowid, text in db.execute("SELECT rowid, recipe_json FROM runs WHERE recipe_json IS NOT NULL").fetchall():
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if not isinstance(obj, dict) or isinstance(obj.get("golden"), dict):
            continue  # already sectioned
        for section, keys in _M011_SECTIONS.items():
            moved = {key: obj.pop(key) for key in keys if key in obj}
            if section == "golden":
                moved = {_M011_GOLDEN_KEYS[k]: v for k, v in moved.items()}
                if "enabled" in moved and isinstance(moved["enabled"], str):
                    moved["enabled"] = moved["enabled"] == "on"
            obj[section] = moved
        db.execute("UPDATE runs SET recipe_json = ? WHERE rowid = ?",
                   [json.dumps(obj, sort_keys=True, ensure_ascii=False), rowid])
