"""Golden answers made, checked and compared (issue 15): what `gcpo golden` does.

GCPO is only as good as its golden answers, and many sets (AIME, AMC, DeepMath) come with a final
answer only: there GCPO degrades to GRPO on the hardest problems. The paper's golden answers are
reference solutions "from a larger model"; gcpo makes them, verifies them and tracks them.

- generate: a teacher samples k solutions per problem with a prompt preset (prompts.py), each
  graded by `Grader.verdicts`, the grading path training rewards go through (a truncated sample is
  wrong whatever it states); the correct ones are stored as candidates of origin "teacher" with
  their provenance (teacher, settings, generation). The teacher is any model gcpo loads (hub id,
  folder, GGUF, the embedded model; sampled by rollout.generate) or an OpenAI-compatible server
  (`vllm serve`, llama.cpp's server...). One transaction per batch: an interrupted generation keeps
  what it finished, and the same command (same set, teacher and settings) resumes it, trying only
  the problems it has not tried, so nothing is stored twice.
- The active candidate. Training injects one golden answer per problem: the active one of the
  origin the recipe's `golden_origin` names (any: the dataset's, else the teacher's). Among a
  problem's teacher candidates the active one is the SHORTEST verified one, by characters (ties:
  the earliest). Shortest, because a golden answer longer than the recipe's max_new_tokens is never
  injected (golden_too_long): the shortest correct one fits the most limits. Characters, not
  tokens, because the student's tokenizer decides and need not be the teacher's; a generated
  candidate always fits the teacher's own limit (a truncated sample grades wrong), and
  `gcpo golden report --recipe R` counts what a recipe would skip. Dataset answers keep their rule:
  the first verified one.
- import: solutions from a file (JSONL, JSON, CSV, Parquet), matched to the set's problems by id
  (gcpo's, or the set file's own) or problem text, graded the same way; unverified ones are kept,
  marked, and never injected (as ingest does).
- list/show: every candidate with its provenance, verification, token length under a tokenizer,
  and what training did with it: how often it was injected, and the problem's next group after.
- report: per golden origin, the coverage a recipe would get and how many answers it would skip
  as too long, with the length distribution.
"""

from __future__ import annotations

import bisect
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from . import resumable, store
from .answers import extract_answer
from .prompts import golden_response
from .errors import GcpoError
from .fields import ID_NAMES, PROBLEM_NAMES, SOLUTION_NAMES
from .grader import Grader
from .readers import content_hash, load_source
from .prompts import PRESETS, Prompt
from .recipe import GOLDEN_ORIGINS
from .records import Problem, Sampling
from .samples import ProblemMatcher
from .texts import checked_text

SERVER_TIMEOUT = 600  # seconds for one request: k long samples of a large model take a while
SERVER_THREADS = 8  # requests in flight at once: a server batches them


@dataclass
class Sample:
    text: str
    truncated: bool  # stopped at the token limit (finish_reason "length")
    tokens: int | None  # the teacher's token count, where known


# ------------------------------------------------------------------------------------ teachers

class ModelTeacher:
    """A model gcpo loads (hub id, folder, .gguf, the embedded model), sampled in this process."""

    server = None

    def __init__(self, name: str):
        from .model import load_for_inference

        try:
            self.model, self.tok = load_for_inference(name)
        except GcpoError:
            raise
        except (OSError, ValueError) as e:  # a hub id offline, a folder transformers cannot read
            raise GcpoError(f"cannot load teacher '{name}': {str(e).splitlines()[0][:300]}") from None
        self.label = name

    def check(self, prompt: Prompt, text: str) -> None:
        prompt.render(self.tok, text)  # a chat preset without a chat template: fail before anything is written

    @contextmanager
    def seeded(self, seed: int):
        """The global torch RNG seeded inside a fork, as evaluate_problems does."""
        import torch

        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    def sample(self, texts: list[str], prompt: Prompt, sampling: Sampling, seed: int) -> list[list[Sample]]:
        from .rollout import generate

        comps = generate(self.model, self.tok, [prompt.render(self.tok, t) for t in texts], sampling)
        return [[Sample(c.text, c.truncated, c.tokens) for c in cs] for cs in comps]


class ServerTeacher:
    """An OpenAI-compatible server: chat presets go to /v1/chat/completions (the server applies
    the model's chat template; a preset's forced opening, such as r1-distill's "<think>", is left
    to it), raw ones to /v1/completions. Uses urllib: no client library."""

    def __init__(self, url: str, model: str | None = None):
        base = url.strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise GcpoError(f"--teacher-server {url!r}: give an http:// or https:// URL, e.g. http://127.0.0.1:8000")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.server = base
        # A server on this machine is reached directly, whatever proxy the environment names.
        local = urllib.parse.urlsplit(base).hostname in ("localhost", "127.0.0.1", "::1")
        self._open = (urllib.request.build_opener(urllib.request.ProxyHandler({})).open if local
                      else urllib.request.urlopen)
        self.label = model or self._first_model()

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with self._open(req, timeout=SERVER_TIMEOUT) as r:
                reply = json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace").strip().splitlines()
            raise GcpoError(f"teacher server {self.base + path}: HTTP {e.code}"
                            + (f": {detail[0][:200]}" if detail else "")) from None
        except (urllib.error.URLError, OSError) as e:
            raise GcpoError(f"cannot reach the teacher server {self.server}: {getattr(e, 'reason', e)}") from None
        except ValueError:
            raise GcpoError(f"teacher server {self.base + path}: the reply is not JSON") from None
        if not isinstance(reply, dict):
            raise GcpoError(f"teacher server {self.base + path}: the reply is not a JSON object")
        return reply

    def _first_model(self) -> str:
        models = self._call("/models").get("data") or []
        if not models or not isinstance(models[0], dict) or not models[0].get("id"):
            raise GcpoError(f"teacher server {self.server} lists no model; name it with --teacher")
        return str(models[0]["id"])

    def check(self, prompt: Prompt, text: str) -> None:
        pass

    def seeded(self, seed: int):
        return nullcontext()  # the seed goes with each request

    def _one(self, text: str, prompt: Prompt, k: int, settings: dict) -> list[Sample]:
        body = dict(settings, model=self.label)
        if prompt.chat:
            path = "/chat/completions"
            system = [{"role": "system", "content": prompt.system}] if prompt.system is not None else []
            body["messages"] = system + [{"role": "user", "content": prompt.template.format(problem=text)}]
        else:
            path, body["prompt"] = "/completions", prompt.template.format(problem=text)
        out: list[Sample] = []
        while len(out) < k:  # a server that ignores n answers one choice a request
            choices = self._call(path, dict(body, n=k - len(out))).get("choices")
            if not isinstance(choices, list) or not choices:
                raise GcpoError(f"teacher server {self.base + path}: the reply has no choices")
            for c in choices[: k - len(out)]:
                c = c if isinstance(c, dict) else {}
                content = (c.get("message") or {}).get("content") if prompt.chat else c.get("text")
                out.append(Sample(content if isinstance(content, str) else "", c.get("finish_reason") == "length",
                                  None))
        return out

    def sample(self, texts: list[str], prompt: Prompt, sampling: Sampling, seed: int) -> list[list[Sample]]:
        settings = dict(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                        seed=seed)
        with ThreadPoolExecutor(SERVER_THREADS) as pool:
            return list(pool.map(lambda t: self._one(t, prompt, sampling.n, settings), texts))


def coverage(db, set_name: str) -> dict:
    """{problems, dataset, teacher, any}: the set's problems with a verified golden answer of each origin."""
    return store.golden_coverage(db, set_name).get(set_name, dict(problems=0, dataset=0, teacher=0, any=0))


def teacher(model: str | None, server: str | None):
    if server:
        return ServerTeacher(server, model)
    if not model:
        raise GcpoError("name the teacher: --teacher MODEL (hub id, folder, .gguf, smollm2-135m) or "
                        "--teacher-server URL")
    return ModelTeacher(model)


# ------------------------------------------------------------------------------------ generate

def golden_id(problem_id: str, text: str) -> str:
    """As ingest names a golden answer: the same text for the same problem is one row."""
    return content_hash(problem_id, text)[:16]


def verified_candidates(problems: list[Problem], samples: list[list[Sample]], verdicts: list[bool], *,
                        model: str | None, params_json: str) -> tuple[list[dict], list[dict]]:
    """(attempts {problem_id, samples, correct}, candidate rows of the correct samples, one per
    distinct text) from each problem's samples and their verdicts, in order."""
    attempts, rows, seen, at = [], [], set(), 0
    for p, ss in zip(problems, samples):
        oks = verdicts[at:at + len(ss)]
        at += len(ss)
        attempts.append(dict(problem_id=p.id, samples=len(ss), correct=sum(oks)))
        for s, ok in zip(ss, oks):
            text = s.text.strip()
            gid = golden_id(p.id, text)
            if ok and gid not in seen:
                try:  # injected as the model's response: texts.py's validation (issue 27), else never stored
                    checked_text(text, "the teacher's completion")
                except ValueError:
                    continue
                seen.add(gid)
                rows.append(dict(id=gid, problem_id=p.id, text=text, final_answer=extract_answer(text),
                                 source_file=None, model=model, params_json=params_json, completion_tokens=s.tokens))
    return attempts, rows


def attempt_summary(attempts: list[dict], k: int) -> dict:
    """The teacher's success: over samples, over problems, and per problem (how many problems had
    0, 1, ..., k correct samples)."""
    samples, correct = sum(a["samples"] for a in attempts), sum(a["correct"] for a in attempts)
    solved = sum(a["correct"] > 0 for a in attempts)
    per = [0] * (k + 1)
    for a in attempts:
        per[min(a["correct"], k)] += 1
    return dict(problems=len(attempts), samples=samples, correct=correct,
                success_rate=correct / samples if samples else None, problems_solved=solved,
                solved_rate=solved / len(attempts) if attempts else None, correct_per_problem=per)


def generate_golden(db, set_ref: str, teacher, *, k: int = 8, temperature: float = 0.7, top_p: float = 1.0,
                    max_new_tokens: int = 512, seed: int = 0, prompt: Prompt | None = None,
                    only_missing: bool = False, limit: int | None = None, batch_size: int = 32,
                    progress: bool = True, grader: Grader | None = None,
                    stop: resumable.StopSignals | None = None) -> dict:
    """Sample, grade and store the teacher's solutions for a set (the module docstring); returns
    the generation's summary with coverage before and after. A resumable job (resumable.run)
    recorded in golden_generations; `stop`: the command's Ctrl-C/SIGTERM handling."""
    if k < 1 or max_new_tokens < 1 or batch_size < 1:
        raise GcpoError("--k, --max-new-tokens and --batch-size must be at least 1")
    set_name, problems = store.set_problems(db, set_ref, limit)
    if not problems:
        raise GcpoError(f"set '{set_name}' has no problems")
    prompt = prompt or PRESETS["boxed"]
    teacher.check(prompt, problems[0].text)
    before = coverage(db, set_name)
    if only_missing:
        have = store.problems_with_verified(db, set_name)
        problems = [p for p in problems if p.id not in have]
    params = dict(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, limit=limit,
                  only_missing=only_missing, server=teacher.server, **prompt.params())
    per_batch = max(1, batch_size // k)
    sampling = Sampling(n=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        batch_size=per_batch * k)

    def opened() -> tuple[str, set[str]]:
        return store.open_generation(db, set_name=set_name, teacher=teacher.label, params=params)

    def sample(chunk: list[Problem], grader: Grader) -> tuple[list[Problem], list[list[Sample]], list[bool]]:
        samples = teacher.sample([p.text for p in chunk], prompt, sampling, seed)
        verdicts = grader.verdicts([(p.text, p.answer, extract_answer(s.text), s.truncated)
                                    for p, ss in zip(chunk, samples) for s in ss])
        return chunk, samples, verdicts

    def write(gen_id: str, graded: tuple) -> None:
        provenance = store.dumps(dict(params, generation_id=gen_id))
        attempts, rows = verified_candidates(*graded, model=teacher.label, params_json=provenance)
        store.write_attempts(db, gen_id, attempts, rows)

    def finish(gen_id: str, resumed: int) -> dict:
        summary = attempt_summary(store.generation_attempts(db, gen_id), k)
        summary.update(candidates=store.generation_candidates(db, gen_id), resumed=resumed)
        store.finish_generation(db, gen_id, summary)
        return summary

    ledger = resumable.Ledger("golden generation", opened, write,
                              lambda gen_id: store.mark_generation_interrupted(db, gen_id), finish)
    out = resumable.run(db, ledger, problems, sample, chunk_size=per_batch, label=f"{teacher.label} · {set_name}",
                        grader=grader, progress=progress, stop=stop, contexts=(teacher.seeded(seed),))
    return dict(generation_id=out.id, set_name=set_name, teacher=teacher.label, params=params, **out.summary,
                coverage_before=before, coverage_after=coverage(db, set_name))


# ------------------------------------------------------------------------------------- import

IMPORT_SOLUTION_NAMES = ("golden_answer", "golden", "solution", "completion", "response") + SOLUTION_NAMES
IMPORT_ID_NAMES = ("problem_id", "source_id") + ID_NAMES
LIST_MAX = 20  # unmatched rows and mismatches listed in a report


def _field(columns: list[str], given: str | None, names: tuple[str, ...], label: str) -> str | None:
    """The field `given` names (an error if the file has none), else the first of `names` present."""
    if given is not None:
        if given not in columns:
            raise GcpoError(f"{label}: no field '{given}' (fields: {', '.join(columns[:12])})")
        return given
    lower = {c.lower(): c for c in reversed(columns)}
    return next((lower[n] for n in names if n in lower), None)


def import_golden(db, path: str | Path, set_ref: str, *, solution: str | None = None, problem: str | None = None,
                  id: str | None = None, teacher: str | None = None, grader: Grader | None = None) -> dict:
    """Attach solutions from a file to a set's problems as teacher candidates; returns what
    happened (matched, verified, new, unmatched rows, coverage before and after)."""
    s = store.resolve_set(db, set_ref)
    loaded = load_source(str(path))
    columns = loaded.columns or list(dict.fromkeys(k for r in loaded.rows for k in r))
    sol_f = _field(columns, solution, IMPORT_SOLUTION_NAMES, loaded.label)
    id_f = _field(columns, id, IMPORT_ID_NAMES, loaded.label)
    text_f = _field(columns, problem, PROBLEM_NAMES, loaded.label)
    if sol_f is None:
        raise GcpoError(f"{loaded.label}: no solution field (looked for {', '.join(IMPORT_SOLUTION_NAMES[:6])}...);"
                        " name it with --solution FIELD")
    if id_f is None and text_f is None:
        raise GcpoError(f"{loaded.label}: no problem id or problem text field; name one with --id or --problem")
    match = ProblemMatcher(store.set_problems(db, s["name"])[1], s["name"])
    found, unmatched, empty = [], [], 0
    for where, row, why in loaded.items():
        if why is not None:
            raise GcpoError(f"{loaded.label}: {where}: {why}; nothing was imported")
        text = row.get(sol_f)
        if text is None or isinstance(text, str) and not text.strip():
            empty += 1
            continue
        try:  # the validation ingest applies (texts.py): a golden answer is injected as the model's response
            checked_text(text, f"field {sol_f!r}", max_bytes=loaded.max_field_bytes)
        except ValueError as e:
            raise GcpoError(f"{loaded.label}: {where}: {e}; nothing was imported") from None
        p, why = match({"problem_id": row.get(id_f) if id_f else None, "problem": row.get(text_f) if text_f else None})
        if p is None:
            unmatched.append({"where": where, "reason": why})
        else:
            found.append((where, p, text.strip()))
    if not found:
        raise GcpoError(f"{loaded.label}: no row matches a problem of set '{s['name']}' by id or text"
                        + (f" ({unmatched[0]['where']}: {unmatched[0]['reason']})" if unmatched else ""))
    before = coverage(db, s["name"])
    with nullcontext(grader) if grader is not None else Grader() as g:
        verdicts = g.verdicts([(p.text, p.answer, extract_answer(t), False) for _, p, t in found])
    params = store.dumps({"file": str(path), "sha256": loaded.fingerprint[:16], "fields": {
        "solution": sol_f, "id": id_f, "problem": text_f}})
    rows = {}
    for (_, p, text), ok in zip(found, verdicts):
        gid = golden_id(p.id, text)
        rows.setdefault(gid, dict(id=gid, problem_id=p.id, text=text, final_answer=extract_answer(text),
                                  source_file=Path(path).name, verified=int(ok), model=teacher,
                                  params_json=params))
    added = store.write_imported(db, list(rows.values()))
    mismatches = [{"where": w, "problem_id": p.id, "answer": p.answer, "golden": extract_answer(t)}
                  for (w, p, t), ok in zip(found, verdicts) if not ok]
    return dict(set_name=s["name"], source=loaded.label, rows_read=loaded.rows_read, matched=len(found),
                verified=sum(verdicts), unverified=len(found) - sum(verdicts), added=added, no_solution=empty,
                unmatched=len(unmatched), unmatched_rows=unmatched[:LIST_MAX], mismatches=mismatches[:LIST_MAX],
                coverage_before=before, coverage_after=coverage(db, s["name"]))


# ---------------------------------------------------------------------------- list, show, report

def load_tokenizer(name: str):
    from .model import load_tokenizer as load, quiet_libraries, resolve_model

    quiet_libraries()
    try:
        return load(resolve_model(name))
    except GcpoError:
        raise
    except (OSError, ValueError) as e:
        raise GcpoError(f"cannot load the tokenizer of '{name}': {str(e).splitlines()[0][:300]}") from None


def response_tokens(tok, text: str) -> int:
    """Tokens of a golden answer as training counts them for golden_too_long (train.go_gold)."""
    from .rollout import response_ids

    return len(response_ids(tok, text))


def injection_stats(candidates: list[dict], injected: list[dict], groups: list[dict]) -> dict[str, dict]:
    """golden id -> {injections, runs, next_groups, next_solved, next_pass_rate}: how often training
    injected it (a golden rollout of its problem whose completion holds its text; the longest such
    text where several do, as a golden_template wraps the text) and, after each injection, the
    problem's next sampled group in that run: solved when any sample was correct."""
    by_problem: dict[str, list[dict]] = {}
    for c in candidates:
        if c["verified"]:  # only a verified answer is ever injected
            by_problem.setdefault(c["problem_id"], []).append(c)
    for cs in by_problem.values():
        cs.sort(key=lambda c: -len(c["text"]))
    steps: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for g in groups:
        steps.setdefault((g["problem_id"], g["run_id"]), []).append((g["step"], g["k"], g["n"]))
    out = {c["id"]: dict(injections=0, runs=set(), next_groups=0, next_solved=0, k=0, n=0) for c in candidates}
    for r in injected:
        c = next((c for c in by_problem.get(r["problem_id"], []) if c["text"] and c["text"] in r["completion"]), None)
        if c is None:
            continue
        s = out[c["id"]]
        s["injections"] += 1
        s["runs"].add(r["run_id"])
        after = steps.get((r["problem_id"], r["run_id"]), [])
        i = bisect.bisect_right(after, (r["step"], float("inf"), float("inf")))
        if i < len(after):
            _, k, n = after[i]
            s["next_groups"] += 1
            s["next_solved"] += k > 0
            s["k"], s["n"] = s["k"] + k, s["n"] + n
    for s in out.values():
        s["runs"] = len(s["runs"])
        s["next_pass_rate"] = s.pop("k") / s["n"] if s["n"] else None
        s.pop("n")
    return out


def list_golden(db, set_ref: str, *, problem: str | None = None, origin: str | None = None,
                active_only: bool = False, tokenizer: str | None = None, limit: int | None = None) -> dict:
    """A set's golden answers (or one problem's, or the one a golden id names) with provenance,
    verification, tokens under `tokenizer` and their use in training: the first `limit` of them
    (all when None), and "total", how many match."""
    s = store.resolve_set(db, set_ref) if set_ref else None
    only = None
    if problem is not None:
        pid, only = store.resolve_golden(db, problem, s["name"] if s else None)
        names = store.problem_sets(db, pid)
        s = s or {"name": names[0]}
        rows = store.golden_candidates(db, s["name"], [pid])
    else:
        rows = store.golden_candidates(db, s["name"])
    # Injections are matched against every candidate of a problem, before any filter: the text of
    # one may hold another's.
    pids = {r["problem_id"] for r in rows}
    usage = injection_stats(rows, store.golden_rollouts(db, pids), store.sampled_groups(db, pids))
    rows = [r for r in rows if (only is None or r["id"] == only) and (origin is None or r["origin"] == origin)
            and (not active_only or r["active"])]
    total = len(rows)
    rows = rows[:limit] if limit is not None else rows  # before counting tokens: only those shown
    tok = load_tokenizer(tokenizer) if tokenizer else None
    for r in rows:
        r["tokens"] = response_tokens(tok, r["text"]) if tok is not None else None
        r.update(usage[r["id"]])
    return dict(set_name=s["name"], tokenizer=tokenizer, golden_answers=rows, total=total,
                coverage=coverage(db, s["name"]))


def percentile(sorted_values: list[int], q: float) -> int | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    return sorted_values[max(1, math.ceil(len(sorted_values) * q / 100)) - 1]


def length_stats(lengths: list[int], limit: int) -> dict:
    """Distribution of golden-answer token lengths against a token limit: quantiles, mean, and a
    histogram by share of the limit (the last bin is what would be skipped as too long)."""
    xs = sorted(lengths)
    bins = {"<=25%": 0, "<=50%": 0, "<=75%": 0, "<=100%": 0, "too long": 0}
    for x in xs:
        share = x / limit
        key = ("<=25%" if share <= 0.25 else "<=50%" if share <= 0.5 else "<=75%" if share <= 0.75
               else "<=100%" if x <= limit else "too long")
        bins[key] += 1
    return dict(n=len(xs), min=xs[0] if xs else None, p50=percentile(xs, 50), p90=percentile(xs, 90),
                max=xs[-1] if xs else None, mean=sum(xs) / len(xs) if xs else None, histogram=bins)


def report(db, set_ref: str, recipe) -> dict:
    """What a recipe would inject on a set, per golden origin: coverage, too long for its
    max_new_tokens (as go_gold decides: the golden_template's text plus end-of-turn, under the
    recipe's tokenizer), and the length distribution of the answers its golden_origin picks."""
    s = store.resolve_set(db, set_ref)
    name, problems = store.set_problems(db, s["name"])
    answers = {p.id: p.answer for p in problems}
    tok = load_tokenizer(recipe.model.name)
    limit, lengths, origins = recipe.generation.max_new_tokens, {}, {}
    for origin in GOLDEN_ORIGINS:
        chosen = store.active_golden(db, name, origin)
        for pid, g in chosen.items():
            if g["id"] not in lengths:
                text = golden_response(recipe.golden.template, g["text"], answers[pid])
                lengths[g["id"]] = response_tokens(tok, text)
        too_long = sum(lengths[g["id"]] > limit for g in chosen.values())
        origins[origin] = dict(covered=len(chosen), too_long=too_long, injectable=len(chosen) - too_long,
                               coverage=len(chosen) / len(problems) if problems else 0.0,
                               injectable_share=(len(chosen) - too_long) / len(problems) if problems else 0.0,
                               lengths=length_stats([lengths[g["id"]] for g in chosen.values()], limit))
    return dict(set_name=name, problems=len(problems), recipe=recipe.name, model=recipe.model.name,
                max_new_tokens=limit, golden="on" if recipe.golden.enabled else "off", golden_origin=recipe.golden.origin,
                origins=origins,
                coverage=coverage(db, name))
