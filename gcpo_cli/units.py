"""Numbers and units in an answer: what reads as a unit after it ("18 dollars", "5 \\text{ cm}^2",
"9 (apples)", "60 km/h"), a gold answer's value without its unit or label (`gold_value`), and what is
a plain number (`as_number`: "1,080", "1 000", "$18"). answers.py grades with these.

A unit is ignored, not converted. Letters that are not a unit are mathematics ("3x", "2pi", "3 or
five" keep their tail), so a policy cannot pass a hedge or a variable off as a unit.
"""

from __future__ import annotations

import re

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


# A gold answer's label in parentheses after a plain number: words of letters (ASDiv, MAWPS and
# SVAMP write "12 (inches of snow)", "9 (quarters)", "4 (hot-dog buns)"). Words that would make it
# a condition rather than a label ("5 (or more)", "3 (mod 5)") keep it.
_LABEL = re.compile(r"[A-Za-z][A-Za-z'’. -]*")
_NOT_LABEL = frozenset("or nor not mod modulo more less fewer than plus minus times approximately approx about "
                       "around roughly nearly almost least most".split())
_FRACTION = re.compile(r"-?\d+\s*/\s*\d+")


def _labelled(gold: str) -> str | None:
    """"12 (inches of snow)" -> "12": a plain number followed by a parenthesised label whose words
    (one of three or more letters at least) all read as words; None otherwise."""
    text = gold.rstrip()
    if not text.endswith(")"):
        return None
    i = text.rfind("(")
    value, label = text[:i].strip(), text[i + 1 : -1].strip()
    if i < 0 or (as_number(value) is None and not _FRACTION.fullmatch(value)) or not _LABEL.fullmatch(label):
        return None
    words = [w.lower() for w in _LETTERS.findall(label)]
    if not any(len(w) >= 3 for w in words) or _NOT_LABEL.intersection(words):
        return None
    return value


def gold_value(gold: str) -> str:
    """A gold answer without the unit or label after its value ("9 (apples)", "5 (dollars)",
    "18 dollars", "2.5 (cm)", "12 (inches of snow)", "9 (quarters)" -> "9", "5", "18", "2.5", "12",
    "9"); the gold as it is when nothing after it reads as a unit (`strip_unit`) or a label
    (`_labelled`): "(1, 2)", "f(x)", "(a) 3", "3 (mod 5)", "3 (x)", or what is left does not end
    like a value ("\\sin(abc)")."""
    value = strip_unit(gold)
    if value and _VALUE_END.search(value):
        return value.strip()
    return _labelled(gold) or gold


# ------------------------------------------------------------------------------------ numbers
# Digits grouped in thousands by a comma, a blank, "~", "\\ " or "\\," (1,000, 1 000, 1\\,000).
_GROUPED = r"(?<![\d.,])\d{1,3}(?:(?:,|\\[ ,]|[ ~])\d{3})+(?!\d)"
_NUMBER = re.compile(rf"-?(?:{_GROUPED}|\d+)(?:\.\d+)?|-?\.\d+")
# Digits apart, other than in thousands or in a mixed number (2 1/2): "1 2" is no number.
_SPACED_DIGITS = re.compile(r"\d(?:\s|~|\\ )+\d(?!\d*\s*/)")
# A currency sign before the answer ($18, \$18, €18, Rs. 18).
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|¥|₹|\\(?:euro|pounds|yen)\b|(?:rs|usd|inr)\.?(?=[\s\d]))\s*", re.I)


def bare(answer: str) -> str:
    """The answer without math delimiters, a currency sign before it or a unit after it."""
    a = answer.strip()
    if len(a) > 1 and a.startswith("$") and a.endswith("$"):
        a = a.strip("$").strip()
    elif a.startswith("\\(") and a.endswith("\\)"):
        a = a[2:-2].strip()
    a = _CURRENCY.sub("", a, count=1)
    return strip_unit(a) or a


def as_number(s: str) -> float | None:
    """A plain decimal number ("1,080", "$18", "27.0", ".5") as a float; None for anything else."""
    t = s.strip().replace("\\!", "").replace("\\$", "").lstrip("$").rstrip(".").strip()
    if not _NUMBER.fullmatch(t):
        return None
    return float(re.sub(r"[^\d.-]", "", t))


def spaced_digits(answer: str) -> bool:
    """Are two digits only blanks apart, other than in thousands (1 000) or a mixed number (2 1/2)?"""
    return _SPACED_DIGITS.search(re.sub(_GROUPED, "", answer)) is not None
