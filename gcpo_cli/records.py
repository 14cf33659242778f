"""The records that cross a seam between modules. A recorded field's name IS its database column:
the store derives its column lists from these classes (the migrations stay literal SQL), so a new
recorded field is declared once, here, and added once, by its migration.

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def memory_only():
    """A field that lives in memory and is never written to the database."""
    return field(default=None, metadata={"column": False})


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem as training, evaluation and golden generation read it (store.set_problems):
    its id, text and reference final answer; the verified golden answer training injects (None:
    none, or not asked for) and its id in the set's own file (for matching imported samples)."""

    id: str
    text: str
    answer: str
    golden: str | None = None
    source_id: str | None = None


def problem_dict(p: Problem) -> dict:
    """A problem as a custom reward function is handed it: {id, text, answer, golden}."""
    return dict(id=p.id, text=p.text, answer=p.answer, golden=p.golden)


@dataclass(slots=True)
class Rollout:
    """One member of a group: a sampled completion or the golden answer, graded. Recorded in
    `rollouts`, one row each (with its run and step).

    Written in three places, in this order: built graded by the trainer's rollout (or by going
    gold), its advantage set once per step (None: displaced by a golden answer, out of the loss),
    its sequence ratio set by the learner's update."""

    problem_id: str
    sample_index: int  # 0..G-1 for the policy's samples; G for an injected golden answer
    completion: str  # decoded text
    extracted_answer: str | None  # its final answer, None when it states none
    truncated: bool  # hit max_new_tokens without EOS
    reward: float
    correct: bool
    is_golden: bool = False
    advantage: float | None = 0.0
    seq_ratio: float | None = None  # the update's sequence-level importance ratio (its last pass)
    policy_version: int | None = None  # the step whose update made the sampling policy (0: initial)
    sampler_logprobs: list[float] | None = None  # the engine's log-prob of each completion token
    prompt_ids: list[int] = memory_only()  # the rendered prompt's tokens
    completion_ids: list[int] = memory_only()  # the completion's tokens, EOS included when it stopped

    @property
    def completion_tokens(self) -> int:
        return len(self.completion_ids)

    @property
    def in_loss(self) -> bool:
        """Whether the update computes this sequence: a non-zero advantage (None: displaced)."""
        return bool(self.advantage)


@dataclass(frozen=True, slots=True)
class Sampling:
    """How an engine draws completions: `n` per prompt, each at most `max_new_tokens` long, at
    `temperature` within the `top_p` nucleus; at most `batch_size` sequences decode together.
    Temperature 0 is greedy: one decode per prompt, shared by its n (they would be identical).
    The one place "greedy" is decided; every engine, the rollout and the evaluation read it here."""

    n: int = 1
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 32

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def draws(self) -> int:
        """Decodes per prompt: n, or 1 when greedy."""
        return 1 if self.greedy else self.n

    @property
    def nucleus(self) -> float:
        """top_p as an engine applies it: 1 (the whole vocabulary) when greedy."""
        return 1.0 if self.greedy else self.top_p


# recorded columns that are computed from other fields (properties above)
DERIVED_COLUMNS = {Rollout: ("completion_tokens",)}


def columns(cls) -> tuple[str, ...]:
    """The database columns of a record class: its recorded fields, then its derived ones."""
    own = tuple(f.name for f in fields(cls) if f.metadata.get("column", True))
    return own + DERIVED_COLUMNS.get(cls, ())


def row(record) -> dict:
    """A record as its database row (booleans as 0/1; other encodings are the store's)."""
    out = {}
    for name in columns(type(record)):
        value = getattr(record, name)
        out[name] = int(value) if isinstance(value, bool) else value
    return out
