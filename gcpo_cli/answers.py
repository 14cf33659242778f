"""Final-answer extraction and equivalence with math-verify: pure functions (the worker process
that runs them with time-outs is grader.py).

Grading rules (`verify_answer`; `grader.Grader.verdicts` is the one entry point training and
evaluation share). The grader must not be gameable by a policy under RL, which learns to hedge:
- A completion that was cut at the token limit (truncated) is wrong, whatever it states.
- No stated answer, or one longer than MAX_ANSWER_CHARS, is wrong (no real final answer is that
  long, and cutting it short could leave a hedge's first half).
- A unit or currency after or before an answer is ignored, not converted: "18 dollars",
  "9 (apples)", "5 cm", "5 \\text{ cm}^2", "60 km/h", "$18", "\\$18.00" are 18, 9, 5, 5, 60, 18,
  18 (`strip_unit` says exactly what reads as a unit). A percentage is math-verify's call (it
  takes 18% for gold 18 and for gold 0.18).
- Letters that are not a unit are mathematics: a variable or constant after a number makes a
  different answer ("3x", "3 x", "7n", "2pi", "5 i", "3e" are not 3, 7, 2, 5, 3).
- One answer only: "3, 4", "3 or 4", "3 or five", "1 and two", "-1 or more", "3 \\pm 1" are sets
  or expressions, never equal to a single gold answer; "c or d" is no option letter; a box inside
  the answer ("\\boxed{3} or 4") is wrong (a box around all of it is only a box), and so are two
  boxes side by side ("\\boxed{3} or \\boxed{4}" reads "3 or 4").
- Several parts for a gold answer of that many (a list or set: "(2,2),(6,2)", "\\{1,2,3\\}"): boxes
  side by side, or parts joined by "and", commas or \\quad, are matched against it as a whole, with
  each part's naming left side dropped ("(x,y) = (5,8) \\quad\\text{and}\\quad (8,5)"; issue 25).
- A symbol keeps its case (\\Pi is not \\pi, X is not x), and digits apart are no number ("1 2" is
  neither 12 nor 3), while digits grouped in thousands are ("1,000", "1 000", "1\\,000").
- An equation counts by its last side only when the left side is a single variable name and
  every later side equals the last: "x = 3" and "x = 2 + 1 = 3" are 3; "4 = 3", "2x = 3" and
  "x = 4 = 3" are not. (A gold answer that is itself an equation is compared as math-verify does.)
- A gold answer is trusted: it is read by math-verify with all its normalisations (its units,
  \\text{}, percent), so golds with units, letters, intervals, tuples and sets keep working.
  A unit after a gold answer's value goes as it does after a predicted one, so the two compare by
  value: "9 (apples)" (ASDiv's layout), "5 (dollars)", "18 dollars" are 9, 5, 18 (issue 13;
  `gold_value`), and so is a number with any label of words in parentheses, "12 (inches of snow)"
  (issue 25). Parentheses that are mathematics stay: "(1, 2)", "f(x)", "(a) 3", "3 (mod 5)".
- MathQA-style option golds (a single letter a-e) compare option letters; `grading_target` maps
  an option's stated value or "60 = c" to its letter first.
All regular expressions here are linear in the answer's length. The published table of what is
accepted and rejected, kept equal to tests/test_grader.py's cases, is docs/grading.md.
"""

from __future__ import annotations

import functools
import math
import re

from .units import as_number, bare, gold_value, spaced_digits

# A longer stated answer is graded wrong without parsing: sympy on a 50k-character string is the
# classic hang, and cutting it short instead could leave the first half of a hedge.
MAX_ANSWER_CHARS = 1000
OPTION_LETTERS = "abcde"
# No real final answer nests brackets this deep; latex2sympy recurses on them until the alarm.
MAX_NESTING = 40

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_HASHES = re.compile(r"####([^\n]*)")  # linear: stripped below (a [ \t]*...\S form is quadratic)
# The last "answer is" / "final answer:" / "answer =" intro; the answer runs to the end of its
# sentence (a full stop followed by space or the end, not the one inside 3.5) or line.
_ANSWER_INTRO = re.compile(r"\banswer\s*(?:is\b|:|=)\s*:?", re.I)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
# A "final answer" statement after the last box is the answer, when it opens like mathematics.
_FINAL_INTRO = re.compile(r"\bfinal\s+answer\s*(?:is\b|:|=)\s*:?", re.I)
_MATH_START = re.compile(r"[$\\\d(\[{+-]|\.\d")
_NON_BLANK = re.compile(r"\S")
_BARE_BOX = re.compile(r"[^\s$]{1,200}")
# Between two boxes of one answer: spacing, math delimiters, and at most one connective.
_GAP_FILL = r"(?:\s|\$|&|\\\\|\\[()\[\],;:! ]|\\q?quad\b)*"
_BOX_GAP = re.compile(_GAP_FILL + r"(?P<sep>,|;|and\b|or\b|\\text\s*\{\s*(?:and|or)\s*\})?" + _GAP_FILL, re.I)
_MAX_BOX_GAP = 80
_OPTION = re.compile(r"^\(?\s*([a-eA-E])\s*(?:\)\s*)?(?:[).:]|$)")  # no two \s* on one run of blanks
_BOLD = re.compile(r"^\\(?:textbf|mathbf|bf)\s*\{")
_OPTION_WRAP = re.compile(r"^(?:option|choice|\\(?:text|mathrm|textrm|textbf|mathbf|mbox)\s*\{)\s*")  # lower case


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each "{" -> position of its "}", in one pass (unbalanced ones are absent)."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
    return match


def _box_spans(text: str) -> list[tuple[int, int, int, int]]:
    """Every non-empty \\boxed{...} (or \\fbox{...}, or "\\boxed 5") in order of its start:
    (start of the macro, end of the box, start and end of its content). An empty \\boxed{} is the
    prompt's own instruction echoed back, not an answer.

    Linear time: braces are matched once for the whole text, so thousands of unclosed
    \\boxed{ (a degenerate completion) cost no more than one, and a box's content is only tested
    for a non-blank character, not copied."""
    spans = []
    match = None
    for m in _BOXED.finditer(text):
        start = m.end()
        if start < len(text) and text[start] == "{":
            match = _matching_braces(text) if match is None else match
            end = match.get(start)
            if end is not None and _NON_BLANK.search(text, start + 1, end):  # unbalanced or empty: no box
                spans.append((m.start(), end + 1, start + 1, end))
            continue
        token = _BARE_BOX.match(text, start)  # \boxed 5
        if token:
            spans.append((m.start(), token.end(), start, token.end()))
    return spans


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty \\boxed{...} (or \\fbox{...}), with nested braces; None if
    absent."""
    spans = _box_spans(text)
    return text[spans[-1][2] : spans[-1][3]].strip() if spans else None


def _final_boxes(text: str, spans: list[tuple[int, int, int, int]]) -> str:
    """The last box's content, or, when boxes stand side by side before it (nothing between them
    but spacing, math delimiters and one ",", ";", "and" or "or"), all of theirs as one answer:
    "\\boxed{(2,2)} and \\boxed{(6,2)}" -> "(2,2) and (6,2)", "\\boxed{1},\\boxed{2}" -> "1, 2",
    "\\boxed{3} or \\boxed{4}" -> "3 or 4" (a hedge for a single-valued gold, graded wrong)."""
    run, seps = [spans[-1]], []
    for prev in reversed(spans[:-1]):
        if 3 * len(run) - 2 > MAX_ANSWER_CHARS:  # a part and a separator are 3 characters at least:
            break  # the answer is already too long to be graded, whatever else the run holds
        gap_start, gap_end = prev[1], run[-1][0]
        if gap_start > gap_end or gap_end - gap_start > _MAX_BOX_GAP:  # nested in it, or apart
            break
        gap = _BOX_GAP.fullmatch(text, gap_start, gap_end)
        if gap is None:
            break
        run.append(prev)
        sep = (gap.group("sep") or ",").lower()
        seps.append(" and " if "and" in sep else " or " if "or" in sep else ", ")
    parts = [_unwrap(text[start:end]) for _, _, start, end in reversed(run)]
    return "".join(part + sep for part, sep in zip(parts, [*reversed(seps), ""]))


def _statement(text: str, start: int) -> str | None:
    """The answer an intro ("the answer is", "final answer:") ending at `start` states: the rest of
    its sentence or line, without math delimiters. None when that is empty or only an empty box."""
    tail = text[start:].lstrip()
    end = _SENTENCE_END.search(tail)
    ans = (tail[: end.start()] if end else tail).strip()
    ans = ans.strip("$").strip()
    if ans.startswith("\\(") and ans.endswith("\\)"):
        ans = ans[2:-2].strip()
    if _BOXED.search(ans):  # "the answer is $\\boxed{}$": only an empty box, no answer
        return None
    return _unwrap(ans.rstrip(".,;")) or None


def extract_answer(text: str | None) -> str | None:
    """The final answer a solution or completion states: a "final answer is $x$" statement after
    the last \\boxed{}, else the last \\boxed{} (with the boxes side by side before it:
    `_final_boxes`), then the last `#### x` line, then the last "the answer is x". None when it
    states none (no last-number guessing: a model must say it)."""
    if not text:
        return None
    spans = _box_spans(text)
    if spans:
        after = max(end for _, end, _, _ in spans)
        intro = None
        for intro in _FINAL_INTRO.finditer(text, after):
            pass
        # Only a statement that opens like mathematics: "the final answer is consistent with ..."
        # after the box is prose about the boxed answer, not another answer.
        if intro is not None and _MATH_START.match(text[intro.end():].lstrip()[:2]):
            stated = _statement(text, intro.end())
            if stated is not None:
                return stated
        return _final_boxes(text, spans)
    hashes = [h for h in (m.strip() for m in _HASHES.findall(text)) if h]
    if hashes:
        return hashes[-1]
    intro = None
    for intro in _ANSWER_INTRO.finditer(text):
        pass
    return _statement(text, intro.end()) if intro is not None else None


def _unwrap(ans: str) -> str:
    """\\textbf{(113) } -> 113: AoPS solutions bold their answer, often in parentheses."""
    ans = ans.strip()
    m = _BOLD.match(ans)
    if m and _matching_braces(ans).get(m.end() - 1) == len(ans) - 1:
        inner = ans[m.end() : -1].strip()
        num = re.fullmatch(r"\(?\s*(-?[\d.,]+)\s*\)?", inner)
        return num.group(1) if num else inner
    return ans


def normalize_answer_field(value) -> str | None:
    """A dataset's answer cell as text: 27.0 -> "27", ["5"] -> "5", None/"" -> None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [normalize_answer_field(v) for v in value]
        items = [i for i in items if i]
        if not items:
            return None
        return items[0] if len(items) == 1 else ", ".join(items)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return text or None


def option_letter(text: str | None) -> str | None:
    """"(b)", "b )", "B", "option b" -> "b"; else None."""
    if not text:
        return None
    t = text.strip().lower()
    t = _OPTION_WRAP.sub("", t).rstrip("}").strip()
    m = _OPTION.match(t)
    return m.group(1).lower() if m else None


def _is_option_gold(gold: str) -> bool:
    return len(gold.strip()) == 1 and gold.strip().lower() in OPTION_LETTERS


def _wrap(expr: str) -> str:
    expr = expr.strip()
    if expr.startswith("$") or expr.startswith("\\("):
        return expr
    return f"${expr}$"


def _as_text(s: str) -> str:
    """An answer for the grader's comparison as text: \\text{} and \\mathrm{} unwrapped; $, \\! and \\,
    gone; blanks gone except one between two digits ("1 2" is not 12); words of three or more
    letters in lower case ("Yes" is "yes"), while a symbol keeps its case (\\Pi is not \\pi, X is not
    x)."""
    s = _TEXT_WRAP.sub(r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("$", "")

    def blank(m: re.Match) -> str:
        return " " if 0 < m.start() and m.end() < len(s) and s[m.start() - 1].isdigit() and s[m.end()].isdigit() else ""

    s = re.sub(r"\s+", blank, s)
    return _WORD.sub(lambda m: m.group().lower(), s).rstrip(".")


def clean_str(s: str) -> str:
    """A looser `_as_text` that groups votes by answer string (maj@k by string, Qwen2.5-Math's way):
    every blank gone and every letter in lower case, so "X" and "x" are one string. Never a verdict."""
    return re.sub(r"\s+", "", _as_text(s)).lower()


_TEXT_WRAP = re.compile(r"\\(?:text|mathrm|textrm|mbox|textnormal)\s*\{([^{}]*)\}")  # [^{}]: linear on nesting
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")  # not a command's name (\\Pi, \\Gamma)
_MIXED = re.compile(r"(-?)(\d+)\s+(\d+)\s*/\s*(\d+)")  # 2 1/2 (GSM8K-style mixed number)


def _unbox(answer: str) -> str:
    """"\\boxed{\\boxed{3}}" -> "3": a box around the whole answer is only a box. Linear: the
    braces are matched once."""
    a = answer.strip()
    if not _BOXED.match(a):
        return a
    match = _matching_braces(a)
    start, end = 0, len(a)
    while (m := _BOXED.match(a, start)) and m.end() < end and a[m.end()] == "{" and match.get(m.end()) == end - 1:
        start, end = m.end() + 1, end - 1
        while start < end and a[start].isspace():
            start += 1
        while end > start and a[end - 1].isspace():
            end -= 1
    return a[start:end]


def _nesting(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")}]":
            depth = max(0, depth - 1)
    return deepest


def _candidates(predicted: str) -> list[str]:
    """Readings of the predicted answer to try: without its currency sign and unit (see
    `strip_unit`), then as written. "2 1/2" is a mixed number (5/2, never 2 * 1/2 = 1)."""
    plain = bare(predicted)
    m = _MIXED.fullmatch(plain)
    if m:
        sign, whole, num, den = m.groups()
        return [f"{sign}\\frac{{{int(whole) * int(den) + int(num)}}}{{{den}}}"]
    return list(dict.fromkeys([plain, predicted]))


@functools.lru_cache(maxsize=1)
def _predicted_config():
    """math-verify's LaTeX reading for a predicted answer: its own normalisation less its unit
    list (which drops "more", "or"-adjacent words and one-letter "units" such as t, h, c, d, so
    that "-1 or more" read as -1), and no fall-back to the last number of a text it could not
    parse (which read "3 \\unknown 4" and "3 | 4" as 4)."""
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
    from math_verify.parser import LatexExtractionConfig

    return [LatexExtractionConfig(normalization_config=NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False))]


def _answer_side(pred: list, timeout: int | None) -> list:
    """An equation stated as an answer, for a gold answer that is not one, counts by its last
    side only when its left side is a single variable name and every later side equals the last
    ("x = 3", "x = 2 + 1 = 3"); any other equation ("4 = 3", "2x = 3", "x = 4 = 3") is dropped.
    math-verify alone takes the last side of any equation, so "4 = 3" verified as 3."""
    import sympy
    from math_verify import verify
    from math_verify.grader import is_equation

    out = []
    for p in pred:
        if isinstance(p, str) or not is_equation(p):
            out.append(p)
            continue
        rels = list(p._unsorted_args) if isinstance(p, sympy.And) else [p]
        last = rels[-1].rhs
        if isinstance(rels[0].lhs, sympy.Symbol) and all(
                verify(r.rhs, last, timeout_seconds=timeout) for r in rels[:-1]):
            out.append(last)
    return out


# ------------------------------------------------------------ symbols, digits, several parts
_GREEK = frozenset("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
                   "omicron pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega".split())
# A LaTeX command, a letter standing alone (not in a word) or a Greek character.
_SYMBOL = re.compile(r"\\([A-Za-z]+)|(?<![A-Za-z])[A-Za-z](?![A-Za-z])|[\u0391-\u03a9\u03b1-\u03c9]")


def _symbols(answer: str) -> set[str]:
    """The Greek letters and one-letter names in an answer, as written (\\Pi, \\pi, x, X, E)."""
    out = set()
    for m in _SYMBOL.finditer(answer):
        name = m.group(1)
        if name is None:
            out.add(m.group())
        elif name.lower() in _GREEK:
            out.add("\\" + name)
    return out


def _differ_in_case(gold: str, predicted: str) -> bool:
    """Do the two name the same symbols but for case (\\Pi for \\pi, X for x)? math-verify lower-cases
    every symbol before comparing (latex2sympy's lowercase_symbols), so it would say equal."""
    g, p = _symbols(gold), _symbols(predicted)
    return g != p and {x.lower() for x in g} == {x.lower() for x in p}


# An answer's parts ("(2,2),(6,2)", "\\{1,2,3\\}", "1 and 9"): split at top-level commas, semicolons, "and"
# and \\quad. A comma before three digits groups thousands.
_PART_SEP = re.compile(r"\\text\s*\{\s*and\s*\}|\band\b|\\q?quad\b|;|,(?!\d{3}(?!\d))", re.I)
_SET_BRACES = re.compile(r"^\\(?:left)?\\\{(.*)\\(?:right)?\\\}$", re.S)
# The left side of a part's equation that names what it is: "x =", "(x, y) =", "a_1 ="
_NAMES = re.compile(r"\(?(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?(?:,(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?)*\)?")


def _split_top(text: str, sep: re.Pattern) -> list[str]:
    """`text` cut at the matches of `sep` outside brackets, blank pieces dropped. One pass."""
    depth, at_depth = 0, []
    for ch in text:
        at_depth.append(depth)
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
    pieces, start = [], 0
    for m in sep.finditer(text):
        if at_depth[m.start()] == 0:
            pieces.append(text[start : m.start()])
            start = m.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip(" \t\n~\\,;:!")]


def _as_parts_of(gold: str, predicted: str) -> list[str]:
    """For a gold answer of n > 1 parts, a predicted answer of n parts as one list, to be matched
    against the gold as a whole: each part's value ("(x,y) = (5,8) \\quad\\text{and}\\quad (8,5)" ->
    "(5,8), (8,5)"), then each part as written ("x = 2 and y = 3" -> "x = 2, y = 3"). Nothing for
    a single-valued gold, so "3 and 4" or two boxes stay a hedge there."""
    if as_number(gold) is not None:
        return []
    braces = _SET_BRACES.match(gold)
    n = len(_split_top(braces.group(1) if braces else gold, _PART_SEP))
    parts = _split_top(predicted, _PART_SEP)
    if n < 2 or len(parts) != n:
        return []
    values = []
    for part in parts:
        names, eq, value = part.partition("=")
        values.append(value.strip() if eq and "=" not in value and _NAMES.fullmatch(re.sub(r"\s+", "", names))
                      else part)
    return list(dict.fromkeys([", ".join(values), ", ".join(parts)]))


def verify_answer(gold: str, predicted: str | None, timeouts: bool = True, timeout_s: int = 5) -> bool:
    """True if `predicted` (an extracted final answer) means the same as `gold`; the rules are in
    the module docstring.

    Runs math-verify in the calling thread; `timeouts=True` uses its signal-based limits of
    `timeout_s` seconds and so must run on a main thread (the Grader's worker does). Never raises."""
    if predicted is None or gold is None:
        return False
    gold, predicted = str(gold).strip(), str(predicted).strip()
    local = local_verdict(gold, predicted)
    if local is not None:
        return local
    gold = gold_value(gold)
    predicted = _unbox(predicted)  # at most MAX_ANSWER_CHARS long, with no box left inside
    if _nesting(predicted) > MAX_NESTING:
        return False
    from math_verify import parse, verify
    from math_verify.grader import is_relation

    t = max(1, int(timeout_s)) if timeouts else None
    try:
        g = parse(_wrap(gold), parsing_timeout=t)
        if not g:
            return False
        gold_relation = any(not isinstance(x, str) and is_relation(x) for x in g)
        readings = [*_as_parts_of(gold, predicted), predicted]
        for cand in dict.fromkeys(c for reading in readings for c in _candidates(reading)):
            p = parse(_wrap(cand), extraction_config=_predicted_config(), parsing_timeout=t)
            if p and not gold_relation:
                p = _answer_side(p, t)
            if p and verify(g, p, timeout_seconds=t):
                return True
        return False
    except Exception:  # math-verify raises on some inputs despite raise_on_error=False
        return False


# Standalone option letters ("c", "(d)", "e )"), not letters inside words.
_OPTION_MENTION = re.compile(r"(?<![A-Za-z\\])[a-eA-E](?![A-Za-z])")


def _several_options(text: str) -> bool:
    """Does the answer name more than one option letter ("c or d", "(b) or (c)", "b, c")?"""
    return len({m.group().lower() for m in _OPTION_MENTION.finditer(text)}) > 1


def local_verdict(gold: str | None, predicted: str | None) -> bool | None:
    """Verdicts that need no sympy (no answer, an overlong one, option letters, identical text,
    symbols that differ only in case, digits apart, two plain numbers, after dropping a unit from
    either, that are clearly equal or clearly not); else None."""
    if gold is None or predicted is None:
        return False
    gold, predicted = str(gold).strip(), str(predicted).strip()
    if not predicted or len(predicted) > MAX_ANSWER_CHARS:
        return False
    predicted = _unbox(predicted)
    if _BOXED.search(predicted):  # "\\boxed{3} or 4": math-verify would read the box alone
        return False
    if _is_option_gold(gold):
        return option_letter(predicted) == gold.lower() and not _several_options(predicted)
    if _as_text(gold) == _as_text(predicted):
        return True
    gold = gold_value(gold)
    if _as_text(gold) == _as_text(predicted):
        return True
    if _differ_in_case(gold, predicted) or (spaced_digits(predicted) and not spaced_digits(gold)):
        return False  # math-verify folds the case of symbols (\\Pi = \\pi) and reads "1 2" as 12 or 3
    g = as_number(gold)
    p = as_number(predicted) if g is not None else None
    if g is not None and p is None:
        p = as_number(bare(predicted))
    if g is not None and p is not None:
        if math.isclose(g, p, rel_tol=1e-9, abs_tol=1e-12):
            return True
        if not math.isclose(g, p, rel_tol=1e-4, abs_tol=1e-6):
            return False  # in between: math-verify's own rounding decides
    return None


_TRAILING_LETTER = re.compile(r"(?:^|[\s(=:-])\(?\s*([a-eA-E])\s*\)?\s*\.?$")
_NAMED_OPTION = re.compile(r"\b(?:option|choice)\s*['(]?\s*([a-eA-E])\b")
_LEADING_LETTER = re.compile(r"^\(?([a-eA-E])\s*\)?\s*(?:[=(]|is\b)")
_OPTION_ITEM = re.compile(r"\b([a-e])\s*\)\s*(.*?)\s*(?=,\s*[a-e]\s*\)|$)", re.S)


def option_for_value(problem: str, predicted: str | None) -> str | None:
    """The letter of the one option whose value a completion states ("12" -> "a" for MathQA's
    "Options: a ) 12 , b ) 16 ..."); None when there are no options or no single match."""
    if not predicted or "Options:" not in problem:
        return None
    want_text, want_num = clean_str(predicted), as_number(predicted)
    hits = set()
    for letter, value in _OPTION_ITEM.findall(problem.rsplit("Options:", 1)[1]):
        nums = re.findall(r"-?\d+(?:\.\d+)?", value.replace(",", ""))
        if clean_str(value) == want_text or (
            want_num is not None and len(nums) == 1 and math.isclose(float(nums[0]), want_num)
        ):
            hits.add(letter)
    return hits.pop() if len(hits) == 1 else None


def grading_target(problem: str, gold: str, extracted: str | None) -> str | None:
    """What to grade against `gold`: the extracted answer, or for a multiple-choice problem the
    letter it names ("60 = c", "1050 ( e )", "option d is correct", "e ( 15 / 2 minutes )") or,
    when it states an option's value instead, that option's letter. An answer that names several
    letters ("c or d") is graded as written, and so is wrong."""
    if (not extracted or len(extracted) > MAX_ANSWER_CHARS or not _is_option_gold(gold)
            or option_letter(extracted) is not None or _several_options(extracted)):
        return extracted
    for pattern in (_TRAILING_LETTER, _NAMED_OPTION, _LEADING_LETTER):
        found = pattern.findall(extracted[-200:] if pattern is not _LEADING_LETTER else extracted[:40])
        if found:
            return found[-1].lower()
    return option_for_value(problem, extracted) or extracted
