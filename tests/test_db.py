from gcpo_cli.db import open_db
from gcpo_cli.migrations import STEP_METRICS


def test_blank_database_migrates_to_expected_schema(tmp_path):
    db = open_db(tmp_path / "x.db")
    expected = {
        "problems": {"id", "text", "answer", "metadata_json", "created_at"},
        "problem_sets": {"id", "name", "description", "created_at"},
        "set_problems": {"set_id", "problem_id", "position", "source_id"},
        "golden_answers": {"id", "problem_id", "text", "final_answer", "source", "verified"},
        "runs": {"id", "recipe", "recipe_json", "model", "algorithm", "status", "last_step"},
        "steps": {"run_id", "step", *STEP_METRICS},
        "rollouts": {
            "run_id", "step", "problem_id", "sample_index", "completion", "extracted_answer",
            "reward", "correct", "tokens", "truncated", "is_golden", "advantage", "seq_ratio",
        },
        "evaluations": {"id", "model", "run_id", "run_step", "set_name", "params_json"},
        "eval_results": {"evaluation_id", "problem_id", "sample_index", "completion", "correct"},
    }
    for table, cols in expected.items():
        assert db[table].exists(), table
        missing = cols - set(db[table].columns_dict)
        assert not missing, (table, missing)
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db["problems"].detect_fts() == "problems_fts"
    # Re-opening applies nothing twice.
    n = db["_sqlite_migrations"].count
    db.close()
    assert open_db(tmp_path / "x.db")["_sqlite_migrations"].count == n
