"""One validation for every text that can reach the model or the database (issue 27).

`checked_text` is applied to each field ingest stores, to each solution `gcpo golden import`
stores, to each teacher completion `gcpo golden generate` stores, and to each completion (and
prompt) `gcpo eval --import` stores. Its rules, each a ValueError that names the value, so that
the caller can add the line or row it came from:

- Text, not something else: null, NaN, infinities, numbers, true/false, lists, objects and binary
  data are named as what they are ("field 'solution' is NaN, not text"), never taken for a
  missing value or turned into the string "nan".
- Valid Unicode: a lone surrogate (JSON's "\\ud800" escape decodes to one) has no UTF-8 encoding,
  so SQLite cannot store it and a tokenizer cannot read it.
- At most `max_bytes` of UTF-8 (default: GCPO_MAX_FIELD_BYTES, else 1 MiB): one field of a
  problem set never needs more, and a few gigabytes in one row would stall every reader of it.
- No chat special-token string (`<|im_end|>`, `<|eot_id|>`, DeepSeek's `<｜end▁of▁sentence｜>`,
  `</s>`, `[INST]`, `<<SYS>>`, `<start_of_turn>`...) in text that reaches the model (a problem
  text, a golden answer injected as the model's own response): a tokenizer turns these strings
  into real special tokens, so such text could close a turn and write the next one. Refusing it
  here, not tokenising around it, keeps every prompt safe for every model that shares the
  database. Text the model never reads (another harness's completion imported for grading) is
  checked with `to_model=False`. A bare `<|x|>` (absolute values) is not a token.

Set names have rules of their own (`check_set_name`): at most SET_NAME_MAX characters and no
control characters (a newline in a name split its row in `gcpo sets`).

A leaf module: it imports nothing from the rest of the package but errors.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata

from .errors import GcpoError

MAX_FIELD_BYTES = 2**20  # default cap of one text, in UTF-8 bytes
FIELD_ENV = "GCPO_MAX_FIELD_BYTES"
SET_NAME_MAX = 200  # characters; a name is typed and shown in one table cell
_SIZE = re.compile(r"\s*(\d{1,19})\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.I)

# Chat-template control strings. Known families: ChatML / Llama 3 / Phi / Qwen (<|im_end|>,
# <|eot_id|>, <|start_header_id|>, <|endoftext|>), DeepSeek's full-width bars
# (<｜end▁of▁sentence｜>, <｜Assistant｜>), Llama 2 / Mistral (</s>, [INST], [/INST], <<SYS>>,
# [SYSTEM_PROMPT], [TOOL_CALLS]...), Gemma (<start_of_turn>). A bare "<|x|>" (one or two
# characters between the bars) is left alone: that is mathematics.
_CHAT_TOKEN = re.compile(
    r"<\|[A-Za-z_][A-Za-z0-9_]{2,63}\|>"
    r"|<\uff5c[^\uff5c<>\n]{1,64}\uff5c>"
    r"|</s>|\[/?INST\]|<</?SYS>>|\[/?(?:SYSTEM_PROMPT|TOOL_CALLS|TOOL_RESULTS|AVAILABLE_TOOLS)\]"
    r"|<(?:start|end)_of_turn>")
# Categories refused in a set name: controls (C0, C1, DEL), format characters (bidi overrides,
# zero-width ones), surrogates (undecodable command-line bytes) and line/paragraph separators.
_NAME_REFUSED = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def chat_token(text: str) -> str | None:
    """The first chat special-token string in `text`, or None."""
    m = _CHAT_TOKEN.search(text)
    return m.group() if m else None


def size_limit(value: int | None, env: str, default: int) -> int:
    """A size limit in bytes: the argument, else the environment variable (a number of bytes, or
    with K/M/G/T, binary), else the default. GcpoError for a value that is not a positive size."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GcpoError(f"{env.lower().removeprefix('gcpo_').replace('_', '-')} must be a positive number of "
                            f"bytes, got {value!r}")
        return value
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return default
    m = _SIZE.fullmatch(raw)
    n = int(m.group(1)) * 1024 ** ("kmgt".index(m.group(2).lower()) + 1 if m.group(2) else 0) if m else 0
    if n < 1:
        raise GcpoError(f"{env}={raw!r} is not a size: give a positive number of bytes, e.g. 1048576 or 1M")
    return n


def field_limit(value: int | None = None) -> int:
    """The cap of one text in bytes: `value`, else GCPO_MAX_FIELD_BYTES, else 1 MiB."""
    return size_limit(value, FIELD_ENV, MAX_FIELD_BYTES)


def utf8_size(text: str, name: str) -> int:
    """UTF-8 bytes of `text`; ValueError naming `name` for a lone surrogate."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} holds a lone surrogate (U+{ord(text[e.start]):04X}), which is not valid "
                         "Unicode text") from None


def _not_text(value) -> str:
    """What a value that is not text is, for a message: 'NaN', 'a number (2.5)', 'a list'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-" if value < 0 else "") + "Infinity"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "binary data"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def checked_text(value, name: str, *, max_bytes: int | None = None, to_model: bool = True) -> str:
    """`value` if it is text that may be stored (and, with `to_model`, shown to a model); else a
    ValueError that names `name` ("field 'solution'") and says what is wrong (module docstring).
    `max_bytes` None: field_limit()."""
    if not isinstance(value, str):
        raise ValueError(f"{name} is {_not_text(value)}, not text")
    cap = field_limit() if max_bytes is None else max_bytes
    size = utf8_size(value, name)
    if size > cap:
        raise ValueError(f"{name} is {size:,} bytes, over the {cap:,}-byte limit for one field ({FIELD_ENV})")
    if to_model:
        token = chat_token(value)
        if token is not None:
            raise ValueError(f"{name} holds the chat special token {token!r}, which would reach the model as a "
                             "real special token (data must not write chat turns); remove it")
    return value


def check_set_name(name: str | None) -> str:
    """The name of a set to create or add to: not blank, at most SET_NAME_MAX characters, no
    control character. GcpoError otherwise."""
    if not name or not name.strip():
        raise GcpoError("the set needs a name (--set NAME)")
    if len(name) > SET_NAME_MAX:
        raise GcpoError(f"the set name is {len(name):,} characters long; the most is {SET_NAME_MAX}")
    bad = next((c for c in name if unicodedata.category(c) in _NAME_REFUSED), None)
    if bad is not None:
        raise GcpoError(f"the set name holds the control character U+{ord(bad):04X} at position "
                        f"{name.index(bad) + 1}; use letters, digits, spaces and punctuation")
    return name
