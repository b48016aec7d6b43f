"""What free-text fields may hold (team names, tags) and how times are written, stated once for the server
and the published schema alike.

The OpenAPI schema publishes patterns as ECMA-262 regexes while the server checks them with Rust's (pydantic),
and the two read \\w, \\d, \\s and \\b differently (ASCII against Unicode). So each pattern names its
characters by code point, which every dialect reads alike, and lengths are maxLength (code points), never a
quantifier (ECMA-262 without the `u` flag counts UTF-16 units)."""

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError, WithJsonSchema

CONTROL = r"\x00-\x1f\x7f-\x9f"
SPACE = r"\x20\xa0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"

TeamName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=rf"^[^{CONTROL}{SPACE}](?:[^{CONTROL}]*[^{CONTROL}{SPACE}])?$",
        description="letters of any script, digits, spaces and punctuation; no control characters, no space at either end (at most 100)",
    ),
]
Tag = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=rf"^[^{CONTROL}{SPACE},]+$",
        description="letters of any script, digits and punctuation but commas; no spaces (at most 64)",
    ),
]

Username = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$", description="letters, digits, _ . @ - (at most 100)"),
]


def violation(rule: Any, value: str) -> str | None:
    """What `value` would need to be to hold `rule` (TeamName, Username, Tag), in the rule's own words; None
    when it holds. For names that arrive outside a request body (the server's CLI)."""
    try:
        TypeAdapter(rule).validate_python(value)
    except ValidationError:
        return rule.__metadata__[0].description
    return None


_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:[Tt](?P<hms>[0-9]{2}:[0-9]{2}):(?P<s>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2}))?"
)


def _moment(value: Any) -> datetime:
    """An RFC 3339 date-time, or a full date (midnight UTC): what the schema's `date-time` and `date` formats
    admit, and nothing more (no Unix numbers, no times without an offset)."""
    if isinstance(value, datetime):
        return value
    found = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError("an RFC 3339 date-time (2026-12-03T10:00:00Z) or a date (2026-12-03)")
    if found["hms"] is None:
        return datetime.fromisoformat(found["date"]).replace(tzinfo=UTC)
    # A leap second (:60) is the last moment of its minute here; fractions beyond microseconds are dropped.
    seconds = min(int(found["s"]), 59)
    offset = "+00:00" if found["offset"] in "Zz" else found["offset"]
    fraction = (found["fraction"] or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{found['date']}T{found['hms']}:{seconds:02d}.{fraction}{offset}")


Moment = Annotated[
    datetime,
    BeforeValidator(_moment),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}],
            "description": "an RFC 3339 date-time (2026-12-03T10:00:00Z) or a date (midnight UTC)",
        }
    ),
]
