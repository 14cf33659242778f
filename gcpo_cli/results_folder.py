"""`gcpo eval --output-path DIR`: a results folder as lm-evaluation-harness writes one, so that the
tools that read lm-eval's output (leaderboards, comparison scripts, `lm_eval.utils.make_table`)
read gcpo's evaluations too.

For each evaluated model, DIR/<model name, sanitised as lm-eval does>/ holds
- results_<date>.json: "results" (set -> {"<metric>,none": value, "<metric>_stderr,none": its
  standard error over problems, or "N/A"}), "configs" (each set's generation and metric list),
  "versions", "n-shot", "higher_is_better", "n-samples" ({"original": the set's size,
  "effective": problems evaluated}), "config" (the model: "model_args" as pretrained=BASE and
  peft=ADAPTER, batch size, limit, seed) and "date" (a Unix time), as lm-eval 0.4 writes them;
- samples_<set>_<date>.jsonl beside it, one line per problem in lm-eval's --log_samples layout:
  "doc" (gcpo's problem_id, source_id, problem, answer), "target", "arguments" (the rendered
  prompt and generation arguments), "resps" (the k completions), "filtered_resps" (the answers
  gcpo extracted), "filter", "metrics", the hashes, each metric's per-problem value, and gcpo's
  "correct", "completion_tokens" and "finish_reason" per completion. `gcpo eval --import` reads
  it back (sample_layouts.py).

The metrics are gcpo's, under their own names (eval_metrics.PAIRED); the filter is "none", as in
lm-eval's math tasks that extract and grade inside their metric. Files are written beside their
targets and renamed into place: never half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

from . import __version__, store
from .errors import GcpoError
from .eval_metrics import PAIRED, Sample, per_problem, stderrs

FILTER = "none"
HIGHER_IS_BETTER = {"mean_at_k": True, "pass_at_k": True, "maj_at_k": True, "maj_at_k_exact": True,
                    "completion_tokens_mean": None, "truncation_rate": False, "unextracted_rate": False}


def sanitized(name: str) -> str:
    """A model name as a folder name, as lm-eval's `model_name_sanitized` makes it."""
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", name)


def check_output_path(path: str | Path) -> None:
    """A GcpoError naming what is wrong unless a results folder can be made at `path`: checked
    before an evaluation runs. A file that can be created in the nearest folder that exists is
    the one test that covers permissions and read-only disks alike."""
    path = Path(path)
    where = f"--output-path {path}"
    if path.exists() and not path.is_dir():
        raise GcpoError(f"{where}: is a file; give a folder (created if new)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise GcpoError(f"{where}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise GcpoError(f"{where}: cannot write in {existing} ({e.strerror or e})") from None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _generation(params: dict) -> dict:
    """lm-eval's generation_kwargs for a generated evaluation; {} for golden answers or imports."""
    if params.get("golden") or params.get("imported"):
        return {}
    temperature = params.get("temperature") or 0.0
    return {"until": [], "do_sample": temperature > 0, "temperature": temperature, "top_p": params.get("top_p"),
            "max_gen_toks": params.get("max_new_tokens"), "seed": params.get("seed")}


def _sample_lines(db, evaluation_id: str, params: dict) -> tuple[list[dict], list[list[Sample]]]:
    """One lm-eval sample line per problem, in the set's order, and the samples for the errors."""
    gen = _generation(params)
    k = params.get("k") or 1
    by: dict[str, list[dict]] = {}
    for r in store.evaluation_samples(db, evaluation_id):
        by.setdefault(r["problem_id"], []).append(r)
    lines, graded = [], []
    for i, rows in enumerate(by.values()):
        first = rows[0]
        samples = [Sample(r["extracted_answer"], bool(r["correct"]), r["completion_tokens"], bool(r["truncated"]))
                   for r in rows]
        doc = {"problem_id": first["problem_id"], "source_id": first["source_id"], "problem": first["problem"],
               "answer": first["gold"]}
        prompt = first["prompt"]
        lines.append({"doc_id": i, "doc": doc, "target": first["gold"],
                      "arguments": {"gen_args_0": {"arg_0": prompt, "arg_1": gen}},
                      "resps": [[r["completion"] for r in rows]],
                      "filtered_resps": [[r["extracted_answer"] for r in rows]], "filter": FILTER,
                      "metrics": list(PAIRED), "doc_hash": _sha(json.dumps(doc, indent=2, ensure_ascii=False)),
                      "prompt_hash": _sha(prompt or ""), "target_hash": _sha(str(first["gold"])),
                      **per_problem(samples, k),
                      "correct": [bool(r["correct"]) for r in rows],
                      "completion_tokens": [r["completion_tokens"] for r in rows],
                      "finish_reason": ["length" if r["truncated"] else "stop" for r in rows]})
        graded.append(samples)
    return lines, graded


def _task(s: dict, params: dict, graded: list[list[Sample]]) -> tuple[dict, dict]:
    """(results entry, configs entry) of one set's evaluation (`params`: its stored parameters)."""
    k = params.get("k") or s.get("k") or 1
    errors = stderrs(graded, k)
    entry: dict = {"alias": s["set_name"]}
    for key in PAIRED:
        if s.get(key) is None:
            continue
        entry[f"{key},{FILTER}"] = s[key]
        entry[f"{key}_stderr,{FILTER}"] = "N/A" if errors[key] is None else errors[key]
    config = {"task": s["set_name"], "dataset_path": f"gcpo set {s['set_name']}", "output_type": "generate_until",
              "repeats": k, "num_fewshot": 0, "generation_kwargs": _generation(params),
              "metric_list": [{"metric": key, "aggregation": "mean", "higher_is_better": HIGHER_IS_BETTER[key]}
                              for key in PAIRED],
              "metadata": {"version": __version__, "evaluation_id": s["evaluation_id"],
                           **{key: v for key, v in params.items() if key != "problems_sha"}}}
    return entry, config


def _config(r: dict, params: dict, run_params: dict) -> dict:
    """lm-eval's "config": the model (the backend as lm-eval's "model": hf or vllm; golden or
    import where nothing was generated) and how it ran."""
    model_args = f"pretrained={r['model']}" + (f",peft={r['adapter']}" if r.get("adapter") else "")
    kind = "golden" if params.get("golden") else "import" if params.get("imported") else params.get("engine") or "hf"
    return {"model": kind, "model_args": model_args, "batch_size": run_params.get("batch_size"), "batch_sizes": [],
            "device": None, "limit": run_params.get("limit"), "gen_kwargs": None, "random_seed": params.get("seed"),
            "gcpo": {"version": __version__, "label": r["label"], "run_id": r.get("run_id"),
                     "run_step": r.get("run_step")}}


def write(db, results: list[dict], path: str | Path, run_params: dict) -> list[str]:
    """Writes each result's (each model's) results file and samples files under `path`; returns
    the files written. `run_params`: the command's parameters (its batch size and limit)."""
    path = Path(path)
    check_output_path(path)
    date_id = datetime.now().isoformat().replace(":", "-")
    staged: list[tuple[Path, Path]] = []  # (partial, final)
    made: list[Path] = []

    def stage(final: Path, text: str) -> None:
        for folder in reversed([final.parent, *final.parent.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        tmp = final.with_name(f".{final.name}.partial")
        tmp.write_text(text, encoding="utf-8")
        staged.append((tmp, final))

    try:
        for r in _by_model(results):
            folder = path / sanitized(r["label"])
            out: dict = {key: {} for key in ("results", "group_subtasks", "configs", "versions", "n-shot",
                                             "higher_is_better", "n-samples")}
            params: dict = {}
            seconds = 0.0
            for s in r["sets"]:
                params = store.resolve_evaluation(db, s["evaluation_id"])["params"]
                task = s["set_name"] if s["set_name"] not in out["results"] else f"{s['set_name']}@{s['evaluation_id']}"
                lines, graded = _sample_lines(db, s["evaluation_id"], params)
                stage(folder / f"samples_{sanitized(task)}_{date_id}.jsonl",
                      "".join(json.dumps(store.finite(x), ensure_ascii=False) + "\n" for x in lines))
                out["results"][task], out["configs"][task] = _task(s, params, graded)
                out["group_subtasks"][task] = []
                out["versions"][task] = __version__
                out["n-shot"][task] = 0
                out["higher_is_better"][task] = {key: v for key, v in HIGHER_IS_BETTER.items() if v is not None}
                out["n-samples"][task] = {"original": store.set_size(db, s["set_name"]), "effective": s["n_problems"]}
                seconds += s.get("seconds") or 0.0
            out.update(config=_config(r, params, run_params), date=time.time(), model_name=r["label"],
                       model_name_sanitized=sanitized(r["label"]),
                       total_evaluation_time_seconds=str(seconds) if seconds else None)
            stage(folder / f"results_{date_id}.json", json.dumps(store.finite(out), indent=2, ensure_ascii=False))
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as e:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise GcpoError(f"cannot write {path}: {e.strerror or e}") from None
    return [str(final) for _, final in staged]


def _by_model(results: list[dict]) -> list[dict]:
    """The results with one entry per model label: stored evaluations shown together (one result
    each) share their model's results file."""
    merged: dict[str, dict] = {}
    for r in results:
        sets = [s for s in r["sets"] if s.get("evaluation_id")]
        if r["label"] in merged:
            merged[r["label"]]["sets"].extend(sets)
        else:
            merged[r["label"]] = dict(r, sets=list(sets))
    return [r for r in merged.values() if r["sets"]]
