"""gcpo: GCPO reinforcement learning for small math-reasoning models, with a SQLite history."""

__version__ = "0.4.0"
