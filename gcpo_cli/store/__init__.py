"""gcpo's one home for data access: every SQL statement and every id lookup lives in this package.

    db           the connection (WAL, migrations), write transactions, ids, JSON, chunked IN
    migrations   the schema, append-only
    resolve      what a user types -> a run, a set or a problem, one way everywhere
    problems     sets, problems, golden answers, ingests
    staging      an ingest's rows staged chunk by chunk, then written in one transaction
    golden       golden answers made, imported and chosen by `gcpo golden`; coverage
    runs         runs, steps, rollouts
    evaluations  evaluations and their samples
    history      the read-only aggregates behind `gcpo inspect`

Callers import the names below (`from . import store; store.resolve_run(db, ref)`); nothing
outside this package writes SQL (tests/test_db.py checks).
"""

from .db import dumps, finite, loads, new_id, open_db, rows_in, snapshot, utcnow, write  # noqa: F401
from .evaluations import finish as finish_evaluation  # noqa: F401
from .evaluations import listing as list_evaluations  # noqa: F401
from .evaluations import set_size  # noqa: F401
from .evaluations import mark_interrupted as mark_evaluation_interrupted  # noqa: F401
from .evaluations import open_evaluation, write_results  # noqa: F401
from .evaluations import results as evaluation_results  # noqa: F401
from .evaluations import resolve as resolve_evaluation  # noqa: F401
from .evaluations import samples as evaluation_samples  # noqa: F401
from .problems import (golden_answers, has_problems, list_problems, list_sets, prior_ingest,  # noqa: F401
                       problem_texts, require_set_name, set_problems, set_sources, stored_answers, verified_golden)
from .staging import IngestStage  # noqa: F401
from .golden import (active_golden, candidates as golden_candidates, coverage as golden_coverage,  # noqa: F401
                     finish_generation, generation_attempts, generation_candidates, golden_rollouts,
                     mark_generation_interrupted, open_generation, problem_sets, problems_with_verified,
                     resolve_golden, sampled_groups, write_attempts, write_imported)
from .resolve import resolve_problem, resolve_run, resolve_set  # noqa: F401
from .runs import (create_run, get_run, list_runs, pack_logprobs, pass_rates, record_step, restart_run,  # noqa: F401
                   rewards, run_status, set_checkpoint, set_environment, set_status, step_columns,
                   unpack_logprobs)
