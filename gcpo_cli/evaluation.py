"""Evaluations: k samples per problem, graded, every sample stored, then summarised (eval_metrics).

- `run_evaluation` is the one way an evaluation is made: the resumable job (resumable.run) over
  a set's problems, recorded in the `evaluations` table, each chunk's samples graded by
  `Grader.verdicts` (as training rewards are: a truncated sample is wrong) and stored in one
  transaction. The same call (same model label, set, run and parameters) resumes an
  unfinished one without redoing its finished problems. Three kinds use it:
- `evaluate_problems` samples with a model, shared by `gcpo eval` and the trainer's held-out
  evaluation. Every sample is stored with its rendered prompt (the preset is in prompts.py).
- `evaluate_golden` grades each problem's own golden answers, as if a model had written them.
- `samples.import_samples` grades another harness's samples.
What is evaluated and compared (models, runs, benchmarks) is eval_targets.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from . import resumable, store
from .answers import extract_answer
from .eval_metrics import Sample, summarize
from .grader import Grader
from .prompts import Prompt
from .prompts import resolve as resolve_prompt
from .records import Problem, Sampling

GOLDEN = "golden"  # the "model" that answers with each problem's own golden answers
GOLDEN_CHUNK = 64  # problems per transaction where nothing is generated (golden answers, imports)


def problem_params(problems: list[Problem], **kw) -> dict:
    """An evaluation's parameters: `kw` plus which problems (their count and a hash of their ids
    in order), so that a resume is of the same problems."""
    ids = "\n".join(p.id for p in problems)
    return dict(kw, problems=len(problems), problems_sha=hashlib.sha256(ids.encode()).hexdigest()[:16])


def samples_by_problem(db, evaluation_id: str) -> dict[str, list[Sample]]:
    """The samples an evaluation stored: problem id -> its samples, by sample index."""
    by: dict[str, list[Sample]] = {}
    for r in store.evaluation_results(db, evaluation_id):
        by.setdefault(r["problem_id"], []).append(Sample(r["extracted_answer"], bool(r["correct"]),
                                                         r["completion_tokens"], bool(r["truncated"])))
    return by


def stored_samples(db, evaluation_id: str, problem_ids: list[str] | None = None) -> list[list[Sample]]:
    """The samples an evaluation stored, grouped by problem (in `problem_ids` order if given)."""
    by = samples_by_problem(db, evaluation_id)
    order = problem_ids if problem_ids is not None else list(by)
    return [by[p] for p in order if p in by]


@dataclass
class Ungraded:
    """One sample of an evaluation before grading: what `graded_rows` grades and stores."""

    problem: Problem
    sample_index: int
    completion: str
    extracted_answer: str | None
    completion_tokens: int | None
    truncated: bool
    prompt: str | None = None  # the rendered prompt it answered, where known


def graded_rows(grader: Grader, samples: list[Ungraded]) -> list[dict]:
    """`eval_results` rows of the samples, graded by `Grader.verdicts` (the training rewards'
    path: a truncated sample is incorrect)."""
    verdicts = grader.verdicts([(s.problem.text, s.problem.answer, s.extracted_answer, s.truncated)
                                for s in samples])
    return [dict(problem_id=s.problem.id, sample_index=s.sample_index, completion=s.completion,
                 extracted_answer=s.extracted_answer, correct=int(ok), completion_tokens=s.completion_tokens,
                 truncated=int(s.truncated), prompt=s.prompt) for s, ok in zip(samples, verdicts)]


def run_evaluation(db, problems: list[Problem], sample: Callable[[list[Problem]], list[Ungraded]], *, label: str,
                   set_name: str, params: dict, k: int, chunk_size: int, run_id: str | None = None,
                   run_step: int | None = None, grader: Grader | None = None, progress: bool = True,
                   stop: resumable.StopSignals | None = None, contexts: tuple = (), order=None,
                   extra: dict | None = None, tokens: Callable[[], int] | None = None) -> dict:
    """Evaluate `problems` as the evaluation (label, set, run, params), resumed if unfinished:
    `sample(chunk)` gives each chunk's samples, graded and stored together (`contexts`, `order`:
    as resumable.run takes them). Returns its metrics (over `problems`, with `extra`) and
    "evaluation_id", "model", "set_name", "run_id", "run_step", "resumed", "seconds",
    "problems_per_s", "tokens_per_s" (from `tokens()`, the tokens generated, where given)."""

    def opened() -> tuple[str, set[str]]:
        return store.open_evaluation(db, model=label, set_name=set_name, params=params, run_id=run_id,
                                     run_step=run_step)

    def finish(evaluation_id: str, resumed: int) -> dict:
        metrics = summarize(stored_samples(db, evaluation_id, [p.id for p in problems]), k) | (extra or {})
        store.finish_evaluation(db, evaluation_id, metrics)
        return metrics

    ledger = resumable.Ledger("evaluation", opened, lambda ev_id, rows: store.write_results(db, ev_id, rows),
                              lambda ev_id: store.mark_evaluation_interrupted(db, ev_id), finish)
    out = resumable.run(db, ledger, problems, lambda chunk, g: graded_rows(g, sample(chunk)), chunk_size=chunk_size,
                        label=f"{label} · {set_name}", grader=grader, progress=progress, stop=stop,
                        contexts=contexts, order=order)
    generated = tokens() if tokens is not None else 0
    return dict(evaluation_id=out.id, model=label, set_name=set_name, run_id=run_id, run_step=run_step,
                **out.summary, resumed=out.resumed, seconds=round(out.seconds, 3),
                problems_per_s=out.done / out.seconds if out.done and out.seconds else None,
                tokens_per_s=generated / out.seconds if generated and out.seconds else None)


@contextmanager
def seeded(seed: int):
    """The global torch RNG seeded inside a fork: what the evaluation draws leaves the caller's
    RNG as it was."""
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def evaluate_problems(db, engine, tok, problems: list[Problem], *, label: str, set_name: str, k: int = 1,
                      temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 512,
                      seed: int = 0, prompt: Prompt | None = None, template: str | None = None,
                      run_id: str | None = None, run_step: int | None = None, batch_size: int = 32,
                      progress: bool = True, grader: Grader | None = None,
                      stop: resumable.StopSignals | None = None) -> dict:
    """Sample k completions for each problem ({id, text, answer}) with `engine` (engines.py; a
    plain model samples through the hf engine), grade and store them, and return the
    evaluation's metrics with "evaluation_id", "model", "set_name" and timing. `prompt` is the
    preset (default boxed); `template` alone is boxed with that user turn. `stop`: the
    command's Ctrl-C/SIGTERM handling (resumable.StopSignals).

    Resumes the unfinished evaluation with the same label, set, run and parameters. Sample j of
    a problem draws from its own stream (seed, problem, j), so a resumed evaluation samples what
    an uninterrupted one would, in any batch; the global torch RNG is left as it was (a fork)."""
    from .engines import as_engine

    engine = as_engine(engine, tok)

    if k < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("k, max_new_tokens and batch_size must be at least 1")
    if prompt is not None and template is not None:
        raise ValueError("give prompt or template, not both")
    prompt = prompt or resolve_prompt(template=template)
    # Rendered before the evaluation is opened: a prompt the tokenizer cannot render (a chat
    # preset without a chat template) leaves nothing behind.
    prompts = {p.id: prompt.render(tok, p.text) for p in problems}
    params = problem_params(problems, k=k, temperature=temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, seed=seed, **prompt.params())
    if engine.name != "hf":  # another sampler: another evaluation (hf's params are those of gcpo 0.3)
        params["engine"] = engine.name
    per_batch = max(1, batch_size // k)
    sampling = Sampling(n=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        batch_size=per_batch * k)
    tokens = 0

    def sample(chunk: list[Problem]) -> list[Ungraded]:
        nonlocal tokens
        comps = engine.generate([prompts[p.id] for p in chunk], sampling, seeds=[f"{seed}:{p.id}" for p in chunk])
        out = [Ungraded(p, j, c.text, extract_answer(c.text), c.tokens, c.truncated, prompts[p.id])
               for p, cs in zip(chunk, comps) for j, c in enumerate(cs)]
        tokens += sum(s.completion_tokens for s in out)
        return out

    # Length bucketing across the whole set, one generation batch per chunk: padding stays
    # small and each chunk's results are written (and survive an interruption) together.
    result = run_evaluation(db, problems, sample, label=label, set_name=set_name, params=params, k=k,
                            chunk_size=per_batch, run_id=run_id, run_step=run_step, grader=grader, progress=progress,
                            stop=stop, contexts=(seeded(seed),), tokens=lambda: tokens,
                            order=lambda p: len(tok(prompts[p.id], add_special_tokens=False).input_ids))
    return dict(result, prompt=prompt.name)


def evaluate_golden(db, problems: list[Problem], *, set_name: str, progress: bool = True,
                    grader: Grader | None = None, stop: resumable.StopSignals | None = None) -> dict:
    """Grade each problem's own golden answers as if a model had written them: a check of the
    extractor and grader on a benchmark's formats. Problems without one are counted, not graded."""
    # A completion is graded on what extract_answer finds; the ingest's own reading (MathQA's
    # trailing "answer : d") stands in where it finds nothing.
    golden = {pid: [(g["text"], extract_answer(g["text"]) or g["final_answer"]) for g in gs]
              for pid, gs in store.golden_answers(db, [p.id for p in problems]).items()}
    have = [p for p in problems if p.id in golden]

    def sample(chunk: list[Problem]) -> list[Ungraded]:
        return [Ungraded(p, j, text, ext, None, False) for p in chunk for j, (text, ext) in enumerate(golden[p.id])]

    return run_evaluation(db, have, sample, label=GOLDEN, set_name=set_name, params=problem_params(have, golden=True),
                          k=1, chunk_size=GOLDEN_CHUNK, grader=grader, progress=progress, stop=stop,
                          extra={"no_golden": len(problems) - len(have)})
