"""Prompt pairs as text records (one JSON object a line): read and checked without torch or a tokenizer.

The CLI reads and checks a prompt file here before it imports torch or loads a model, so a bad line is reported in
a second with its line number; :mod:`probes.prompts.promptset` then tokenises the same records.
"""

from __future__ import annotations

import json
from pathlib import Path

from probes.core.errors import ProbesError
from probes.prompts.roles import END

RECORD_KEYS = ("clean", "corrupt", "answer", "foil", "roles")


class RepeatedLines(UserWarning):
    """A prompt file repeats lines exactly: kept (a user may mean them), counted once per group in the statistics."""


def read_records(path: str | Path) -> tuple[list[dict], list[str], str | None]:
    """The records of a JSONL prompt file (blank lines skipped), where each is (``FILE line N``), all checked, and
    a note naming exact duplicate lines (None if there are none)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ProbesError(f"cannot read prompt file {path}: {getattr(err, 'strerror', None) or err}") from None
    records, where, first_seen, repeats = [], [], {}, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise ProbesError(f"{path} line {number}: not valid JSON ({err})") from None
        loc = f"{path} line {number}"
        check_record(record, loc)
        if line.strip() in first_seen:
            repeats.append(f"{number} (= {first_seen[line.strip()]})")
        first_seen.setdefault(line.strip(), number)
        records.append(record)
        where.append(loc)
    if not records:
        raise ProbesError(f"{path} holds no prompt pairs: write one JSON object per line")
    note = None
    if repeats:
        note = (f"{path} repeats lines {', '.join(repeats[:5])}{' ...' if len(repeats) > 5 else ''}: kept, and "
                "counted once per group in the statistics")
    return records, where, note


def check_record(record: object, loc: str) -> None:
    """One record's keys and types; a pair that cannot be a minimal pair (answer = foil, clean = corrupt) is refused."""
    if not isinstance(record, dict):
        raise ProbesError(f"{loc}: a prompt pair must be a JSON object with keys {', '.join(RECORD_KEYS)}")
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        missing_keys = ", ".join(repr(k) for k in missing)
        raise ProbesError(f"{loc}: missing {missing_keys}; a prompt pair needs {', '.join(RECORD_KEYS)}")
    for key in RECORD_KEYS[:4]:
        if not isinstance(record[key], str) or not record[key]:
            raise ProbesError(f"{loc}: '{key}' must be a non-empty string, got {record[key]!r:.80}")
    if not isinstance(record["roles"], dict) or not record["roles"]:
        raise ProbesError(f"{loc}: 'roles' must be an object mapping role names to words of the clean text")
    if END in record["roles"]:
        raise ProbesError(f"{loc}: role name '{END}' is reserved (it is always the last real token); rename that role")
    if "group" in record:
        check_group(record["group"], loc)
    if not isinstance(record.get("labels", {}), dict):
        raise ProbesError(f"{loc}: 'labels' must be an object mapping label names to values")
    if _has_surrogates(record):
        raise ProbesError(f"{loc}: holds a lone surrogate escape (\\ud800-\\udfff), which is not text; fix the encoding")
    if record["answer"] == record["foil"]:
        raise ProbesError(f"{loc}: answer and foil are both {record['answer']!r:.40}: the logit difference would be 0")
    if record["clean"] == record["corrupt"]:
        raise ProbesError(f"{loc}: clean and corrupt are the same text: a minimal pair must differ")


def check_group(group: object, loc: str) -> None:
    if isinstance(group, bool) or not isinstance(group, (str, int)):
        raise ProbesError(
            f"{loc}: 'group' must be a string or an integer (prompts sharing it are one unit for statistics), "
            f"got {group!r:.80}"
        )


def _has_surrogates(x: object) -> bool:
    if isinstance(x, str):
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(x, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in x.items())
    if isinstance(x, list):
        return any(_has_surrogates(v) for v in x)
    return False
