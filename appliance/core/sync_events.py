"""Pushed event kinds beyond ledger rows (docs/wire/sync.md, "Event kinds"): how the
primary checks the body a site sent before `storage/sync_records.py` applies it.

A site writes these events with SQLite triggers (migration 0007) in the transaction of
the change itself: its job log (`job`), page-counter checks (`counter_check`), cards
linked at its panels (`card`) and users it created (`user`). Each checker returns the
fields the primary stores, or the reason the event cannot apply; an event that cannot
apply is quarantined and reported, never applied, and never blocks the outbox.

Only card HMACs travel (`lookup`); no event carries a PIN, a password or a verifier.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

JOB_EVENTS = frozenset({"created", "released", "completed", "held", "pending", "cancelled",
                        "aborted", "expired"})
JOB_STATES = frozenset({"held", "pending", "processing", "completed", "canceled", "aborted",
                        "expired"})
COUNTER_STATUSES = frozenset({"ok", "discrepancy", "overlapped", "unmeasured"})
_HMAC = re.compile(r"^[0-9a-f]{64}$")

Checked = tuple[dict[str, Any] | None, str | None]


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any, empty: bool = False) -> bool:
    return isinstance(value, str) and (empty or bool(value))


def _fields(body: dict[str, Any], spec: dict[str, Callable[[Any], bool]],
            problems: list[str]) -> dict[str, Any]:
    for name, ok in spec.items():
        if not ok(body.get(name)):
            problems.append(f"{name}: {getattr(ok, '__doc__', None) or 'bad value'}")
    return {name: body.get(name) for name in spec}


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        return value is None or check(value)

    ok.__doc__ = f"null or {check.__doc__ or 'a value'}"
    return ok


def _of(kind: str, check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        return check(value)

    ok.__doc__ = kind
    return ok


INT = _of("an integer", _int)
COUNT = _of("an integer >= 0", lambda v: _int(v) and v >= 0)
NUMBER = _of("a number", _number)
NAME = _of("a non-empty string", _text)
TEXT = _of("a string", lambda v: _text(v, empty=True))
FLAG = _of("0 or 1", lambda v: v in (0, 1) and not isinstance(v, bool))
LOOKUP = _of("a card HMAC (64 hex digits)", lambda v: isinstance(v, str) and bool(_HMAC.match(v)))


def check_job(body: dict[str, Any], entry_id: str) -> Checked:
    problems: list[str] = []
    fields = _fields(body, {
        "job_uuid": NAME, "event": _of(f"one of {sorted(JOB_EVENTS)}", JOB_EVENTS.__contains__),
        "state": _of(f"one of {sorted(JOB_STATES)}", JOB_STATES.__contains__),
        "queue": NAME, "owner": NAME, "pages": _optional(COUNT), "copies": COUNT,
        "colour": FLAG, "sides": NAME, "device": _optional(NAME), "attempt": COUNT,
        "impressions": COUNT, "charged": INT, "created_at": NUMBER, "at": NUMBER,
    }, problems)
    if not problems:
        prefix = f"job:{fields['job_uuid']}:{fields['event']}"
        if entry_id != prefix and not entry_id.startswith(prefix + ":"):
            problems.append(f"the event id must be '<site>/{prefix}[:<suffix>]'")
    return _verdict("job", fields, problems)


def check_counter(body: dict[str, Any], entry_id: str) -> Checked:
    problems: list[str] = []
    fields = _fields(body, {
        "job_uuid": NAME, "attempt": COUNT, "device": NAME,
        "counter_before": _optional(INT), "counter_after": _optional(INT),
        "counter_delta": _optional(INT), "impressions": COUNT, "difference": _optional(INT),
        "status": _of(f"one of {sorted(COUNTER_STATUSES)}", COUNTER_STATUSES.__contains__),
        "detail": TEXT, "started_at": NUMBER, "finished_at": NUMBER,
    }, problems)
    if not problems and entry_id != f"counter:{fields['job_uuid']}:{fields['attempt']}":
        problems.append("the event id must be '<site>/counter:<job uuid>:<attempt>'")
    return _verdict("counter_check", fields, problems)


def check_card(body: dict[str, Any], entry_id: str) -> Checked:
    problems: list[str] = []
    fields = _fields(body, {"username": NAME, "lookup": LOOKUP, "linked_at": NUMBER}, problems)
    extra = set(body) - set(fields)
    if extra:
        # Nothing but the HMAC may describe a card: a body with more is refused whole.
        problems.append(f"unexpected fields {sorted(extra)}")
    if not problems and not entry_id.startswith(f"card:{fields['lookup']}:"):
        problems.append("the event id must be '<site>/card:<lookup>:<suffix>'")
    return _verdict("card", fields, problems)


def check_user(body: dict[str, Any], entry_id: str) -> Checked:
    problems: list[str] = []
    fields = _fields(body, {
        "username": NAME, "full_name": TEXT, "email": TEXT, "account": NAME,
        "directory_id": _optional(NAME), "disabled": FLAG, "created_at": NUMBER,
    }, problems)
    if not problems and not entry_id.startswith(f"user:{fields['username']}:"):
        problems.append("the event id must be '<site>/user:<username>:<suffix>'")
    return _verdict("user", fields, problems)


def _verdict(kind: str, fields: dict[str, Any], problems: list[str]) -> Checked:
    if problems:
        return None, f"invalid {kind} event: " + "; ".join(problems)
    return fields, None


CHECKERS: dict[str, Callable[[dict[str, Any], str], Checked]] = {
    "job": check_job,
    "counter_check": check_counter,
    "card": check_card,
    "user": check_user,
}
