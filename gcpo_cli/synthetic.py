"""Built-in generated problem sets with worked golden solutions (for the demo and the tests).

`synthetic:arithmetic` makes integer arithmetic of graded difficulty:
  level 1: one-digit sums          level 2: two-digit sums (the CPU reference task)
  level 3: two-digit differences   level 4: two-digit by one-digit products
  level 5: (a + b) * c, two steps
Each problem's golden answer is a short worked solution ending in \\boxed{answer}.
"""

from __future__ import annotations

import random

LEVELS = (1, 2, 3, 4, 5)


def _problem(level: int, rng: random.Random) -> tuple[str, str, str]:
    if level == 1:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        ans = a + b
        return f"What is {a} + {b}?", str(ans), f"{a} + {b} = {ans}. The answer is \\boxed{{{ans}}}."
    if level == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        ans = a + b
        return f"What is {a} + {b}?", str(ans), f"{a} + {b} = {ans}. The answer is \\boxed{{{ans}}}."
    if level == 3:
        a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
        ans = a - b
        return f"What is {a} - {b}?", str(ans), f"{a} - {b} = {ans}. The answer is \\boxed{{{ans}}}."
    if level == 4:
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        ans = a * b
        return f"What is {a} * {b}?", str(ans), f"{a} * {b} = {ans}. The answer is \\boxed{{{ans}}}."
    if level == 5:
        a, b, c = rng.randint(10, 49), rng.randint(10, 49), rng.randint(2, 9)
        s = a + b
        ans = s * c
        return (
            f"What is ({a} + {b}) * {c}?",
            str(ans),
            f"First {a} + {b} = {s}. Then {s} * {c} = {ans}. The answer is \\boxed{{{ans}}}.",
        )
    raise ValueError(f"unknown level {level}; levels are {LEVELS}")


def parse_levels(spec: str) -> list[int]:
    """"2" -> [2]; "1-3" -> [1, 2, 3]; "1,4" -> [1, 4]."""
    levels: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            levels.extend(range(int(lo), int(hi) + 1))
        elif part:
            levels.append(int(part))
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or not levels:
        raise ValueError(f"levels must be within {LEVELS[0]}-{LEVELS[-1]}, got {spec!r}")
    return levels


def arithmetic(count: int = 200, seed: int = 0, levels: list[int] | tuple[int, ...] = LEVELS) -> list[dict]:
    """`count` distinct problems, levels in round-robin, as rows with problem/solution/answer/level.

    A level that runs out of distinct problems (level 1 has only 81) leaves the rotation and the
    others fill the count. Deterministic for a given (count, seed, levels)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    active = list(levels)
    turn = 0
    while len(rows) < count:
        if not active:
            raise ValueError(f"cannot make {count} distinct problems at levels {list(levels)}")
        level = active[turn % len(active)]
        for _ in range(200):  # a few collisions are normal; 200 in a row means exhausted
            problem, answer, solution = _problem(level, rng)
            if problem not in seen:
                break
        else:
            active.remove(level)
            continue
        seen.add(problem)
        turn += 1
        rows.append(
            {"id": f"arith-{seed}-{len(rows)}", "problem": problem, "solution": solution,
             "answer": answer, "level": level}
        )
    return rows
