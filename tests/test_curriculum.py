"""The frontier curriculum counts only golden answers training can inject (issue 25 item 7).

A golden answer longer than max_new_tokens, as the recipe's golden_template writes it, is never
injected (go_gold: too_long), so the hopeless counter of its problem never moves. Counted as a
golden answer, it kept an all-wrong problem at the GOLDEN weight forever: drawn ~12x as often as
a hopeless one, teaching nothing."""

from __future__ import annotations

import pytest

from gcpo_cli import curriculum
from gcpo_cli import recipe_load as recipes
from gcpo_cli import train as training
from gcpo_cli.ingest import ingest_rows
from gcpo_cli.model import build_tiny, tiny_tokenizer
from gcpo_cli.records import Problem

LIMIT = 40  # the tiny recipe's max_new_tokens; the tiny tokenizer is byte-level: a token a character


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "model"))


def test_a_golden_answer_counts_only_when_it_fits_as_the_template_writes_it():
    tok = tiny_tokenizer()
    fits = "x" * (LIMIT - 1)  # its characters, then the end-of-turn token: exactly the limit
    pool = [Problem("fits", "2 + 2?", "4", golden=fits), Problem("over", "2 + 2?", "4", golden=fits + "x"),
            Problem("none", "2 + 2?", "4", golden=None)]
    assert curriculum.usable_golden(pool, tok, "{solution}", LIMIT) == {"fits"}
    # The template's own text counts, the answer it states included.
    assert curriculum.usable_golden(pool, tok, "{solution}{answer}", LIMIT) == set()
    assert curriculum.usable_golden(pool, tok, "{solution}{answer}", LIMIT + 1) == {"fits"}


def test_an_all_wrong_problem_whose_golden_answer_is_too_long_is_not_kept_on_the_frontier(db, tiny_dir):
    # Six problems the random tiny model never solves; only "long" has a golden answer, longer
    # than the tiny recipe's max_new_tokens. Once each has been seen, nothing tells them apart:
    # all are hopeless, and the frontier must draw "long" no more often than the others.
    rows = [dict(id="long", problem="What is 2 + 2?", answer="4",
                 solution="Two and two make four, as counting on the fingers shows: \\boxed{4}.")]
    rows += [dict(id=f"p{i}", problem=f"What is {i} + 7?", answer=str(i + 7), solution="") for i in range(5)]
    assert len(rows[0]["solution"]) + 1 > LIMIT
    ingest_rows(db, rows, "frontier", problem="problem", solution="solution", answer="answer", id="id")
    r = recipes.load("tiny", [f"model.name={tiny_dir}", "set_name=frontier", "curriculum=frontier",
                              "problems_per_step=1", "samples_per_problem=2", "steps=12", "save_every=0"])
    assert r.generation.max_new_tokens == LIMIT
    run = training.train(db, r)
    picks = [s for s, in db.execute("SELECT DISTINCT step FROM rollouts r JOIN set_problems sp ON"
                                    " sp.problem_id = r.problem_id WHERE r.run_id = ? AND sp.source_id = 'long'",
                                    [run["run_id"]])]
    steps = list(db.query("SELECT golden_injections, golden_too_long FROM steps WHERE run_id = ?", [run["run_id"]]))
    assert sum(s["golden_injections"] for s in steps) == 0  # never injected...
    assert sum(s["golden_too_long"] for s in steps) == len(picks) > 0  # ...too long each time it was drawn
    # As one of six hopeless problems, about one draw in six: 2 of 12 (this seed: 1; the old code,
    # which counted it golden and so never hopeless: 6).
    assert len(picks) <= 3, picks
