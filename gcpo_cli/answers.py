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
  the answer ("\\boxed{3} or 4") is wrong (a box around all of it is only a box).
- An equation counts by its last side only when the left side is a single variable name and
  every later side equals the last: "x = 3" and "x = 2 + 1 = 3" are 3; "4 = 3", "2x = 3" and
  "x = 4 = 3" are not. (A gold answer that is itself an equation is compared as math-verify does.)
- A gold answer is trusted: it is read by math-verify with all its normalisations (its units,
  \\text{}, percent), so golds with units, letters, intervals, tuples and sets keep working.
  A unit after a gold answer's value goes as it does after a predicted one, so the two compare by
  value: "9 (apples)" (ASDiv's layout), "5 (dollars)", "18 dollars" are 9, 5, 18 (issue 13;
  `gold_value`). Parentheses that are mathematics stay: "(1, 2)", "f(x)", "(a) 3", "3 (mod 5)".
- MathQA-style option golds (a single letter a-e) compare option letters; `grading_target` maps
  an option's stated value or "60 = c" to its letter first.
All regular expressions here are linear in the answer's length.
"""

from __future__ import annotations

import functools
import math
import re

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
_OPTION = re.compile(r"^\(?\s*([a-eA-E])\s*(?:\)\s*)?(?:[).:]|$)")  # no two \s* on one run of blanks
_BOLD = re.compile(r"^\\(?:textbf|mathbf|bf)\s*\{")


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


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty \\boxed{...} (or \\fbox{...}), with nested braces; None if
    absent. An empty \\boxed{} is the prompt's own instruction echoed back, not an answer.

    Linear time: braces are matched once for the whole text, so thousands of unclosed
    \\boxed{ (a degenerate completion) cost no more than one."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    match = _matching_braces(text) if "{" in text else {}
    for start in reversed(starts):
        if start < len(text) and text[start] == "{":
            end = match.get(start)
            if end is not None and text[start + 1 : end].strip():
                return text[start + 1 : end].strip()
            continue  # unbalanced or empty: try an earlier one
        m = re.match(r"([^\s$]+)", text[start:start + 200])  # \boxed 5
        if m:
            return m.group(1)
    return None


def extract_answer(text: str | None) -> str | None:
    """The final answer a solution or completion states: the last \\boxed{}, then the last
    `#### x` line, then the last "the answer is x". None when it states none (no last-number
    guessing: a model must say it)."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return _unwrap(boxed)
    hashes = [h for h in (m.strip() for m in _HASHES.findall(text)) if h]
    if hashes:
        return hashes[-1]
    intro = None
    for intro in _ANSWER_INTRO.finditer(text):
        pass
    if intro is not None:
        tail = text[intro.end():].lstrip()
        end = _SENTENCE_END.search(tail)
        ans = (tail[: end.start()] if end else tail).strip()
        ans = ans.strip("$").strip()
        if ans.startswith("\\(") and ans.endswith("\\)"):
            ans = ans[2:-2].strip()
        if _BOXED.search(ans):  # "the answer is $\\boxed{}$": only an empty box, no answer
            return None
        return _unwrap(ans.rstrip(".,;")) or None
    return None


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
    t = re.sub(r"^(?:option|choice|\\text\{)\s*", "", t).rstrip("}").strip()
    m = _OPTION.match(t)
    return m.group(1).lower() if m else None


def _is_option_gold(gold: str) -> bool:
    return len(gold.strip()) == 1 and gold.strip().lower() in OPTION_LETTERS


def _wrap(expr: str) -> str:
    expr = expr.strip()
    if expr.startswith("$") or expr.startswith("\\("):
        return expr
    return f"${expr}$"


def clean_str(s: str) -> str:
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)  # [^{}]: linear on "\\text{\\text{..."
    s = s.replace("\\!", "").replace("\\,", "").replace("$", "")
    return re.sub(r"\s+", "", s).rstrip(".").lower()


_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_MIXED = re.compile(r"(-?)(\d+)\s+(\d+)\s*/\s*(\d+)")  # 2 1/2 (GSM8K-style mixed number)
# A currency sign before the answer ($18, \$18, €18, Rs. 18).
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|¥|₹|\\(?:euro|pounds|yen)\b|(?:rs|usd|inr)\.?(?=[\s\d]))\s*", re.I)

# ---------------------------------------------------------------------- units after an answer
# The answer is tokenised in one left-to-right pass (every alternative is a bounded or
# delimiter-stopped scan, so the whole pass is linear), then a unit is read off its end.
_TOKEN = re.compile(
    r"(?P<text>\\(?:text|mbox|mathrm|textrm|textnormal|textit|textbf|mathit)\s*\{[^{}]*\})"
    r"|(?P<paren>\([^()]*\))"
    r"|(?P<rate>[A-Za-z]+\s*/\s*[A-Za-z]+\.?)"  # km/h, m/s, miles/hour
    r"|(?P<word>[A-Za-z]+\.?)"
    r"|(?P<exp>\^\s*(?:\{\s*[23]\s*\}|[23])|[²³])"  # cm^2, m^{3}
    r"|(?P<deg>(?:°|\^\s*\{?\s*\\circ\s*\}?)\s*[CFK]?(?![A-Za-z]))"
    r"|(?P<space>\s+|~|\\[,;:! ]|\\q?quad\b)"
    r"|(?P<other>\\[A-Za-z]+|.)",
    re.S,
)
_UNIT_CHARS = re.compile(r"[A-Za-z\s./°²³^-]*")  # what a \text{} or (...) unit may contain
_LETTERS = re.compile(r"[A-Za-z]+")
# Words after a number that change what it says, so they are never read as a unit: connectives
# and hedges (3 or 4, -1 or more), number words (3 five, 3 hundred), constants, Greek letters and
# function names (2 pi, 3 sin), negations. A plural ("thirds", "hundreds") counts as its singular.
_NOT_UNITS = frozenset("""
    and or nor but either neither not no none nothing never plus minus times over divided than more
    less fewer least most maybe perhaps possibly probably approximately approx about around roughly
    nearly almost exactly between through thru till until else otherwise also then both any all each
    every some several many few same other another only are was were equal equals
    wrong incorrect false true invalid undefined impossible unknown infinite infinitely inf infinity
    infty nan zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety
    hundred thousand million billion trillion dozen half halve third fourth fifth sixth seventh
    eighth ninth tenth quarter hundredth thousandth millionth double triple twice thrice squared
    cubed root sqrt power factorial percent percentage pct permille pi tau phi theta alpha beta
    gamma delta epsilon lambda sigma omega euler sin cos tan cot csc sinh cosh tanh arcsin arccos
    arctan log exp mod gcd lcm floor ceil abs max
""".split())
# Two-letter words are units only when known (a two-letter word is as often a product of two
# variables); one letter is a variable (x, n) or a constant (e, i) unless it sits in \text{}.
_SHORT_UNITS = frozenset("cm mm km nm dm um kg mg ml cl dl ft yd mi oz lb hr yr ms ns hz ha kb mb gb "
                         "tb kw mw kj rs sq cu in am pm".split())
_RATE_LETTERS = frozenset("mshgl")  # one-letter units allowed in a rate: m/s, km/h, g/l


def _unit_word(word: str, in_text: bool = False) -> bool:
    w = word.rstrip(".").lower()
    singular = {w, w[:-1] if w.endswith("s") else w, w[:-2] if w.endswith("es") else w}
    if not w or singular & _NOT_UNITS:
        return False
    if len(w) == 1:
        return in_text and w not in "ie"
    if len(w) == 2:
        return in_text or w in _SHORT_UNITS
    return True


def _is_unit(kind: str, tok: str) -> bool:
    if kind == "deg":
        return True
    if kind == "word":
        return _unit_word(tok)
    if kind == "rate":
        return all(_unit_word(side) or side.strip().rstrip(".").lower() in _RATE_LETTERS
                   for side in tok.split("/"))
    inner = tok[tok.index("{") + 1 : -1] if kind == "text" else tok[1:-1]
    words = _LETTERS.findall(inner)
    # No digits, operators, commas: "\\text{ or } 4", "(or 4)" and "(3, 4)" are not units.
    return bool(words) and _UNIT_CHARS.fullmatch(inner) is not None and all(
        _unit_word(w, in_text=kind == "text") for w in words)


def strip_unit(answer: str) -> str | None:
    """The answer without the unit after it ("18 dollars", "5 \\text{ cm}^2", "9 (apples)",
    "60 km/h", "90°" -> the number or expression before it); None when nothing after it reads
    as a unit. A unit is a run, at the end, of: words of three or more letters that are not in
    `_NOT_UNITS`, known two-letter units (cm, kg, ...), \\text{...} blocks of such words (one
    letter allowed there: \\text{m}), a parenthesised word ("(apples)"), a rate (km/h), an
    exponent on a unit (cm^2) and degree signs. The reading stops at the first token that is not
    one, so "3 x", "2pi", "5 i", "7n", "3 or five", "-1 or more" keep their tail, and then
    math-verify reads the letters as the variables and constants they are."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(answer)]
    cut, exponent = None, False
    for i in range(len(tokens) - 1, -1, -1):
        kind, tok = tokens[i]
        if kind == "space":
            continue
        if kind == "exp" and not exponent:  # belongs to the unit on its left, if there is one
            exponent = True
            continue
        if not _is_unit(kind, tok):
            break
        cut, exponent = i, False
    if cut is None:
        return None
    while cut and tokens[cut - 1][0] == "space":  # "5 \\, \\text{cm}": the spacing goes too
        cut -= 1
    return "".join(tok for _, tok in tokens[:cut]) or None


# What a gold answer's value ends in once its unit is gone: a digit, a brace (\\frac{1}{2}) or %.
# "f(abc)" and "\\sin(abc)" would leave a bare function name: their parentheses stay.
_VALUE_END = re.compile(r"[\d}%]\s*$")


def gold_value(gold: str) -> str:
    """A gold answer without the unit after its value ("9 (apples)", "5 (dollars)", "18 dollars",
    "2.5 (cm)" -> "9", "5", "18", "2.5"); the gold as it is when nothing after it reads as a unit
    (`strip_unit`: "(1, 2)", "f(x)", "(a) 3", "3 (mod 5)", "3 (x)") or what is left does not end
    like a value ("\\sin(abc)")."""
    bare = strip_unit(gold)
    if bare and _VALUE_END.search(bare):
        return bare.strip()
    return gold


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


def _bare(answer: str) -> str:
    """The answer without math delimiters, a currency sign before it or a unit after it."""
    a = answer.strip()
    if len(a) > 1 and a.startswith("$") and a.endswith("$"):
        a = a.strip("$").strip()
    elif a.startswith("\\(") and a.endswith("\\)"):
        a = a[2:-2].strip()
    a = _CURRENCY.sub("", a, count=1)
    return strip_unit(a) or a


def _as_number(s: str) -> float | None:
    """A plain decimal number ("1,080", "$18", "27.0", ".5") as a float; None for anything else."""
    t = s.strip().replace("\\!", "").replace("\\$", "").lstrip("$").rstrip(".").strip()
    if not _NUMBER.fullmatch(t):
        return None
    return float(t.replace(",", ""))


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
    bare = _bare(predicted)
    m = _MIXED.fullmatch(bare)
    if m:
        sign, whole, num, den = m.groups()
        return [f"{sign}\\frac{{{int(whole) * int(den) + int(num)}}}{{{den}}}"]
    return list(dict.fromkeys([bare, predicted]))


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
        for cand in _candidates(predicted):
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
    two plain numbers, after dropping a unit from either, that are clearly equal or clearly not);
    else None."""
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
    if clean_str(gold) == clean_str(predicted):
        return True
    gold = gold_value(gold)
    if clean_str(gold) == clean_str(predicted):
        return True
    g = _as_number(gold)
    p = _as_number(predicted) if g is not None else None
    if g is not None and p is None:
        p = _as_number(_bare(predicted))
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
    want_text, want_num = clean_str(predicted), _as_number(predicted)
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
