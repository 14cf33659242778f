"""Rich rendering: sparklines, compact tables, and the three `gcpo inspect` views.

Everything here fits the console's width (80 columns included) and carries its meaning in
characters, never in colour alone, so output stays readable with NO_COLOR and in logs: a golden
injection is a `G`, a graduation a `^`, a regression an `x`, a verdict a word.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

from rich import box
from rich.console import Console
from rich.segment import Segment
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

BLOCKS = "▁▂▃▄▅▆▇█"
ZERO = "·"  # 0 of G: visible, and unlike the lowest block (1 of G)


# ----------------------------------------------------------------------------- helpers
def chunks(n: int, width: int) -> list[range]:
    """Split n items into at most `width` contiguous, nearly equal runs (one per column)."""
    width = max(1, width)
    if n <= width:
        return [range(i, i + 1) for i in range(n)]
    return [range(i * n // width, (i + 1) * n // width) for i in range(width)]


def _mean(vals: Iterable[float | None]) -> float | None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def sparkline(values: Sequence[float | None], width: int, lo: float | None = None,
              hi: float | None = None) -> str:
    """Values scaled min..max onto eight blocks, averaged per column; gaps stay blank."""
    cols = [_mean(values[i] for i in c) for c in chunks(len(values), width)]
    present = [c for c in cols if c is not None]
    if not present:
        return ""
    lo = min(present) if lo is None else lo
    hi = max(present) if hi is None else hi
    out = []
    for c in cols:
        if c is None:
            out.append(" ")
        elif hi <= lo:
            out.append(BLOCKS[3])
        else:
            out.append(BLOCKS[min(7, max(0, int((c - lo) / (hi - lo) * 7 + 0.5)))])
    return "".join(out)


def pass_sparkline(ks: Sequence[int], ns: Sequence[int], width: int) -> str:
    """k of n per group as a share: `·` none correct, `▁` a few ... `█` all correct."""
    out = []
    for c in chunks(len(ks), width):
        k, n = sum(ks[i] for i in c), sum(ns[i] for i in c)
        share = k / n if n else 0.0
        out.append(ZERO if k == 0 else BLOCKS[min(7, max(0, math.ceil(share * 8) - 1))])
    return "".join(out)


def marker_line(marks: Sequence[str], width: int, priority: str) -> str:
    """Per column the highest-priority mark among its items (`priority` lists marks, best first)."""
    out = []
    for c in chunks(len(marks), width):
        present = {marks[i] for i in c}
        out.append(next((m for m in priority if m in present), " "))
    return "".join(out).rstrip()


def step_list(steps: Sequence[int], limit: int = 6) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10': runs of consecutive steps collapse."""
    if not steps:
        return "none"
    spans, start = [], steps[0]
    for prev, cur in zip(steps, list(steps[1:]) + [None]):
        if cur is None or cur != prev + 1:  # a span ends here
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    more = len(spans) - limit
    return ", ".join(spans[:limit]) + (f" (+{more} more)" if more > 0 else "")


def num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """Text from data (problems, completions, answers, ids) made safe for a terminal: control
    characters (ESC sequences that clear the screen or retitle the window, bells, C1 codes)
    become visible escapes such as \\x1b. Newlines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class SafeConsole(Console):
    """A rich Console that never writes a control character it did not make itself: the text
    of every segment passes through `clean` (rich adds its own colours later, from each
    segment's style), so data printed anywhere cannot clear the screen or retitle the window."""

    def render(self, renderable, options=None):
        for segment in super().render(renderable, options):
            yield segment if segment.control else Segment(clean(segment.text), segment.style)


def one_line(text: str | None, limit: int = 200) -> str:
    text = clean(" ".join((text or "").split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short(id_: str | None, n: int = 12) -> str:
    return "-" if id_ is None else id_ if len(id_) <= n else id_[:n] + "…"


class CompactTable:
    """A table whose rows stay one line each at any width: every column but the last keeps its
    full width, and the last (usually problem text) is cut with `…` to what is left."""

    GAP = 2  # one padding cell plus the (blank) divider of SIMPLE_HEAD

    def __init__(self, *columns: str, title: str | None = None):
        # ">name" marks a right-aligned (numeric) column.
        self.columns = [(c[1:], "right") if c.startswith(">") else (c, "left") for c in columns]
        self.title = title
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells) -> None:
        self.rows.append(tuple("-" if c is None else clean(str(c)) for c in cells))

    def __rich_console__(self, console: Console, options):
        cols = self.columns
        widths = [max([cell_len(h)] + [cell_len(r[i]) for r in self.rows]) for i, (h, _) in enumerate(cols)]
        fixed = sum(widths[:-1]) + self.GAP * (len(cols) - 1)
        last = max(min(widths[-1], options.max_width - fixed), 4)
        t = Table(box=box.SIMPLE_HEAD, title=self.title, title_justify="left", title_style="bold",
                  pad_edge=False, show_edge=False, padding=(0, 1, 0, 0), collapse_padding=False)
        for i, (h, justify) in enumerate(cols):
            w = last if i == len(cols) - 1 else widths[i]
            t.add_column(h, no_wrap=True, overflow="ellipsis", justify=justify, header_style="bold",
                         min_width=w, max_width=w)
        for r in self.rows:
            t.add_row(*(Text(c) for c in r))
        yield t


def pack(parts: Sequence[str], width: int, sep: str = " · ") -> list[str]:
    """Join phrases with `sep` into lines of at most `width`, never breaking inside a phrase."""
    lines: list[str] = []
    for p in parts:
        if lines and cell_len(lines[-1] + sep + p) <= width:
            lines[-1] += sep + p
        else:
            lines.append(p)
    return lines


def heading(console: Console, *parts: str) -> None:
    """A blank line, then the parts joined by ` · ` and wrapped between parts, never inside."""
    console.print()
    for line in pack(parts, console.width):
        console.print(Text(line, style="bold"))


def completion(console: Console, head: str, text: str | None, max_lines: int | None = 12) -> None:
    """A completion under its header line, indented; clipped to `max_lines` unless None."""
    console.print(Text(head, style="bold"))
    body = Text(clean((text or "").rstrip()) or "(empty)")
    lines = body.wrap(console, max(20, console.width - 2))
    if max_lines is not None and len(lines) > max_lines:
        cut = len(lines) - max_lines
        lines = lines[:max_lines]
        lines.append(Text(f"… {cut} more lines (--full shows all)", style="dim"))
    for line in lines:
        console.print(Text("  ") + line, overflow="fold")


# ----------------------------------------------------------------------------- problem view
def render_problem(console: Console, h: dict, full: bool = False) -> None:
    w = console.width
    _render_problem_header(console, h["problem"])
    _render_golden_answers(console, h["golden_answers"])
    _render_training_history(console, h, w)
    _render_evaluations(console, h["evaluations"])
    _render_wrong_answers(console, h["wrong_answers"])
    _render_examples(console, h, w, full)
    if full:
        _render_every_completion(console, h)


def _render_problem_header(console: Console, p: dict) -> None:
    """Prints the problem's id, sets, text and answer."""
    console.print(Text.assemble(("Problem ", "bold"), (p["id"], "bold"),
                                f"   sets: {', '.join(p['sets']) or 'none'}"))
    console.print(Text(p["text"] or ""), overflow="fold")
    console.print(Text.assemble(("answer: ", "bold"), p["answer"] or "-"))


def _render_golden_answers(console: Console, golden: list[dict]) -> None:
    """Prints the golden answers section: one row per golden answer, or why none helps."""
    heading(console, f"Golden answers ({len(golden)})")
    if not golden:
        console.print("none: when every sample is wrong there is nothing to inject")
        return
    t = CompactTable("status", "source", "final", "text")
    for g in golden:
        t.add_row("verified" if g["verified"] else "UNVERIFIED", g["source"] or "-",
                  g["final_answer"] or "-", one_line(g["text"]))
    console.print(t)


def _render_training_history(console: Console, h: dict, w: int) -> None:
    """Prints the training history section: one block per run, then the legend."""
    runs = h["runs"]
    heading(console, f"Training history ({len(runs)} run{'s' * (len(runs) != 1)})")
    if not runs:
        where = f"run {h['run_filter']}" if h.get("run_filter") else "training"
        console.print(f"never sampled in {where}", markup=False)
        return
    for r in runs:
        _render_problem_run(console, r, w)
    for line in pack([f"k of G: {ZERO} none correct, ▁ few .. █ all (golden answer not counted)",
                      "events: G golden injected, ^ graduated, x regressed"], w - 2, "; "):
        console.print(Text("  " + line, style="dim"))


def _render_problem_run(console: Console, r: dict, w: int) -> None:
    """Prints one run's block of the problem view: title, k-of-G sparkline, events and facts."""
    label = 9
    steps = r["steps"]
    g_max = max(s["n"] for s in steps)
    console.print(Text.assemble(
        ("run ", "bold"), (r["run_id"], "bold"),
        f"  {r['algorithm'] or '-'} · {r['status'] or '-'} · {r['appearances']} appearances, steps "
        f"{r['first_step']}-{r['last_step']}, G={g_max}"), overflow="ellipsis", no_wrap=True)
    spark_w = w - label - 2
    regressed = set(r["regressed_steps"])
    marks = ["^" if s["step"] == r["graduated_step"] else "x" if s["step"] in regressed
             else "G" if s["golden"] else "" for s in steps]
    console.print(f"  {'k of G':<{label - 2}}" + pass_sparkline(
        [s["k"] for s in steps], [s["n"] for s in steps], spark_w))
    ev = marker_line(marks, spark_w, "^xG")
    if ev:
        console.print(f"  {'events':<{label - 2}}{ev}")
    for line in pack(_problem_run_facts(r), w - 2):
        console.print("  " + line, markup=False)


def _problem_run_facts(r: dict) -> list[str]:
    """Returns the phrases summing up one run of a problem: pass rate, golden, graduation."""
    facts = [f"pass rate {pct(r['pass_rate'])}", f"last {r['last_k']} of {r['last_n']}"]
    if r["golden_steps"]:
        facts.append(f"golden injected at steps {step_list(r['golden_steps'])}")
    if r["graduated_step"] is not None:
        facts.append(f"graduated at step {r['graduated_step']}")
    elif r["first_solved_step"] is not None:
        facts.append(f"solved from its first appearance (step {r['first_solved_step']})")
    else:
        facts.append("never solved")
    if r["regressed_steps"]:
        facts.append(f"regressed at steps {step_list(r['regressed_steps'])}")
    return facts


def _render_evaluations(console: Console, evals: list[dict]) -> None:
    """Prints the evaluations section, one row per evaluation; nothing when there are none."""
    if not evals:
        return
    heading(console, f"Evaluations ({len(evals)})")
    t = CompactTable("evaluation", "model", "run@step", "set", ">correct", "verdict")
    for e in evals:
        at = f"{short(e['run_id'], 8)}@{e['run_step']}" if e["run_id"] else "-"
        model = "(golden check)" if e.get("golden_check") else short(e["model"], 18)
        t.add_row(short(e["evaluation_id"], 12), model, at, e["set_name"] or "-",
                  f"{e['k']}/{e['n']}", e["verdict"])
    console.print(t)


def _render_wrong_answers(console: Console, wrong: list[dict]) -> None:
    """Prints the most common wrong answers with their counts, or "none recorded"."""
    heading(console, "Most common wrong answers", "training and evaluation")
    if not wrong:
        console.print("none recorded")
        return
    t = CompactTable(">count", "answer")
    for a in wrong:
        t.add_row(str(a["count"]), a["answer"] or "(no answer extracted)")
    console.print(t)


def _render_examples(console: Console, h: dict, w: int, full: bool) -> None:
    """Prints one wrong and the latest correct completion, clipped unless `full`."""
    examples = (("wrong_example", "A wrong completion"), ("latest_correct", "Latest correct completion"))
    for key, title in examples:
        ex = h[key]
        console.print()
        if not ex:
            never = key == "latest_correct" and h["runs"]
            console.print(Text(f"{title}: none" + (" (never solved without the golden answer)"
                                                    if never else ""), style="bold"))
            continue
        where = (f"run {ex['run_id']} step {ex['step']}" if ex["source"] == "train"
                 else f"evaluation {short(ex['evaluation_id'])}")
        facts = [f"{title}: {where}", f"sample {ex['sample_index']}",
                 f"answer {ex['extracted_answer'] or '-'}",
                 f"{num(ex['completion_tokens'])} tokens" + (", truncated" if ex["truncated"] else "")]
        completion(console, "\n".join(pack(facts, w, ", ")), ex["completion"], None if full else 12)


def _render_every_completion(console: Console, h: dict) -> None:
    """Prints every training, then every evaluation completion of the problem, unclipped."""
    heading(console, f"Every completion ({len(h.get('completions', []))} in training, "
                     f"{len(h.get('eval_completions', []))} in evaluation)")
    for c in h.get("completions", []):
        mark = "GOLDEN" if c["is_golden"] else "correct" if c["correct"] else "wrong"
        completion(console, f"run {short(c['run_id'])} step {c['step']} sample {c['sample_index']}: "
                            f"{mark}, answer {c['extracted_answer'] or '-'}", c["completion"], None)
    for c in h.get("eval_completions", []):
        mark = "correct" if c["correct"] else "wrong"
        completion(console, f"evaluation {short(c['evaluation_id'])} sample {c['sample_index']}: "
                            f"{mark}, answer {c['extracted_answer'] or '-'}", c["completion"], None)


# ----------------------------------------------------------------------------- run view
RUN_CURVES = [("reward_mean", "reward mean"), ("all_wrong_frac", "all-wrong share"),
              ("golden_rate", "golden-answer rate"), ("completion_tokens_mean", "completion length"),
              ("clip_frac", "clipped fraction"), ("ratio_max", "ratio max"),
              ("optimizer_updates", "optimiser updates"), ("tokens_per_s", "tokens/s"),
              ("sampler_logp_abs_diff", "sampler |Δ log p|")]


def _flatten(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], d


def render_run(console: Console, h: dict, full: bool = False, limit: int = 10) -> None:
    r = h["run"]
    w = console.width
    console.print(Text.assemble(("Run ", "bold"), (r["id"], "bold"),
                                f"  {r['algorithm'] or '-'} · {r['status'] or '-'} · step "
                                f"{r['last_step'] if r['last_step'] is not None else '-'} of "
                                f"{r['steps_planned'] or '-'}"))
    seed = r["seed"] if r["seed"] is not None else "-"
    for line in pack([f"model {r['model'] or '-'}", f"set {r['set_name'] or '-'}", f"seed {seed}",
                      f"recipe {r['recipe'] or '-'}", f"created {r['created_at'] or '-'}"], w):
        console.print(line, markup=False)
    recipe = r.get("recipe_json")
    if isinstance(recipe, dict) and recipe:
        items = "  ".join(f"{k}={v}" for k, v in _flatten(recipe))
        lines = Text(items).wrap(console, w - 2)
        if not full and len(lines) > 6:
            lines = lines[:6]
            lines.append(Text("… (--full or --json shows the whole recipe)", style="dim"))
        heading(console, "Recipe")
        for line in lines:
            console.print(Text("  ") + line)

    steps = h["steps"]
    if not steps:
        heading(console, "Per step: nothing recorded yet")
    else:
        heading(console, f"Per step ({len(steps)} steps)",
                "sparkline low..high, then first -> last [min, max]")
        _curves(console, steps, full)
    _run_problems(console, h, full, limit)


def _curves(console: Console, steps: list[dict], full: bool) -> None:
    w = console.width
    curves = list(RUN_CURVES)
    if full:  # every metric the steps recorded
        recorded = dict.fromkeys(k for s in steps for k, v in s.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool))
        curves += [(m, m) for m in recorded if m not in dict(curves) and m not in ("id", "step")]
    label = max(len(name) for _, name in curves) + 1
    rows = []
    for key, name in curves:
        vals = [s.get(key) for s in steps]  # every recorded metric is at one level (store)
        present = [v for v in vals if v is not None]
        stats = (f"{num(present[0])} -> {num(present[-1])} [{num(min(present))}, {num(max(present))}]"
                 if present else "no data")
        rows.append((name, vals, stats))
    # One sparkline width for all curves, so that a column is the same steps in every curve.
    stats_w = max(len(st) for _, _, st in rows)
    spark_w = max(8, w - 2 - label - stats_w - 1)
    for name, vals, stats in rows:
        console.print(f"  {name:<{label}}{sparkline(vals, spark_w):<{spark_w}} {stats}")


def _run_problems(console: Console, h: dict, full: bool, limit: int) -> None:
    ps = h["problems"]
    heading(console, f"Problems: {ps['seen']} seen", f"{len(ps['solved_from_start'])} solved from the start",
            f"{len(ps['graduated'])} graduated", f"{len(ps['never_solved'])} never solved",
            f"{len(ps['regressed'])} regressed")
    n = None if full else limit

    def more(items):
        if n is not None and len(items) > n:
            console.print(Text(f"  +{len(items) - n} more (--full or --json lists all)", style="dim"))

    if ps["graduated"]:
        t = CompactTable("problem", ">graduated", ">injected", ">seen", "text",
                  title=f"Graduated ({len(ps['graduated'])}): first solved at step, after failing")
        for a in ps["graduated"][:n]:
            t.add_row(short(a["problem_id"], 16), str(a["graduated_step"]), str(len(a["golden_steps"])),
                      str(a["appearances"]), one_line(a["text"]))
        console.print(t)
        more(ps["graduated"])
    if ps["never_solved"]:
        t = CompactTable("problem", ">seen", ">injected", "text", title=f"Never solved ({len(ps['never_solved'])})")
        for a in ps["never_solved"][:n]:
            t.add_row(short(a["problem_id"], 16), str(a["appearances"]), str(len(a["golden_steps"])),
                      one_line(a["text"]))
        console.print(t)
        more(ps["never_solved"])
    if ps["regressed"]:
        t = CompactTable("problem", ">solved", "all wrong at", ">last", "text",
                  title=f"Regressed ({len(ps['regressed'])}): solved, then all wrong later")
        for a in ps["regressed"][:n]:
            t.add_row(short(a["problem_id"], 16), str(a["first_solved_step"]),
                      step_list(a["regressed_steps"], 2), f"{a['last_k']}/{a['last_n']}", one_line(a["text"]))
        console.print(t)
        more(ps["regressed"])

    if h["evaluations"]:
        t = CompactTable("evaluation", ">step", "set", ">correct", ">rate", title="Evaluations of this run")
        for e in h["evaluations"]:
            t.add_row(short(e["evaluation_id"], 16), str(e["run_step"]), e["set_name"] or "-",
                      f"{e['k']}/{e['n']}", pct(e["k"] / e["n"] if e["n"] else None))
        console.print()
        console.print(t)


# ----------------------------------------------------------------------------- set view
def render_set(console: Console, h: dict, full: bool = False) -> None:
    from .store.history import BUCKETS

    s = h["set"]
    console.print(Text.assemble(("Set ", "bold"), (s["name"], "bold"),
                                f"  {s['problems']} problems · {h['measured']} measured · "
                                f"{h['unseen']} never sampled"))
    if s.get("description"):
        console.print(Text(one_line(s["description"], 300)), overflow="fold")
    gc = h["golden_coverage"]
    console.print(f"golden answers: {gc['verified']} verified · {gc['unverified_only']} unverified only · "
                  f"{gc['none']} without", markup=False)
    heading(console, "Measured difficulty: problems by pass rate", "golden answers not counted")
    if not h["distribution"]:
        console.print("no rollouts or evaluations on this set yet")
    else:
        t = CompactTable("source", ">n", *[">" + b[0] for b in BUCKETS], ">mean")
        for d in h["distribution"]:
            if d["kind"] == "run":
                src = f"run {short(d['id'], 8)} {d['algorithm'] or ''}"
            elif d["kind"] == "evaluation":
                src = f"eval {short(d['id'], 8)} @{d['run_step'] if d['run_step'] is not None else '-'}"
            else:
                src = "all runs"
            t.add_row(src, str(d["problems"]), *[str(d["buckets"][b[0]]) for b in BUCKETS],
                      pct(d["mean_pass_rate"]))
        console.print(t)
    heading(console, f"Problems that most need golden answers ({h['need_golden_total']})")
    if not h["need_golden"]:
        console.print("none: every problem that came back all wrong has a verified golden answer"
                      if h["measured"] else "nothing measured yet: train or evaluate on this set first")
        return
    for line in pack(["all wrong: groups with no correct sample",
                      "no gold: of those, how many had no golden answer to inject"], console.width, "; "):
        console.print(Text(line, style="dim"))
    t = CompactTable("problem", ">pass", ">eval", ">all wrong", ">no gold", "golden", "text")
    for a in h["need_golden"]:
        t.add_row(short(a["problem_id"], 14), pct(a["pass_rate"]), pct(a["eval_pass_rate"]),
                  str(a["all_wrong"]), str(a["wasted"]), a["golden"], one_line(a["text"]))
    console.print(t)
    if len(h["need_golden"]) < h["need_golden_total"]:
        console.print(Text(f"  +{h['need_golden_total'] - len(h['need_golden'])} more "
                           "(--full or --json lists all)", style="dim"))
