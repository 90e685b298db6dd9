r"""What a request may say, checked in plain Python (the FastAPI wiring turns a
:class:`RequestError` into its 4xx JSON answer).

>>> limits = Limits(max_id_chars=8, default_k=10, max_k=50, max_request_items=3)
>>> parse_k(None, limits), parse_k("5", limits)
(10, 5)
>>> def reason(call, *args):
...     try:
...         call(*args)
...     except RequestError as exc:
...         return exc.status, exc.reason
>>> reason(parse_k, "0", limits)
(400, 'k must be an integer from 1 to 50, got 0')
>>> parse_score_request(b'{"user_id": "u1", "k": 3, "exclude": ["a"]}', limits)
ScoreRequest(user_id='u1', k=3, exclude=frozenset({'a'}), candidates=None)
>>> reason(parse_score_request, b'{"user_id": "u1\\u0000"}', limits)
(400, 'user_id holds a control character (NUL included)')
>>> plain_lookup("/v1/users/u1/recommendations", b"k=5", limits), plain_lookup("/v1/users/u1/recommendations", b"k=0", limits)
(('u1', 5), None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

#: Control characters (Unicode Cc, NUL included): ingestion sends ids holding one to the DLQ, so
#: no stored id has one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
SCORE_KEYS = ("user_id", "k", "exclude", "candidates")


class RequestError(ValueError):
    """A request the service will not answer: ``status`` (4xx) and the reason, for the client."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    max_id_chars: int
    default_k: int
    max_k: int
    max_request_items: int

    @classmethod
    def of(cls, cfg: Any) -> "Limits":
        """From the typed configuration: ids as long as ingestion accepts, the rest ``serving``'s."""
        s = cfg.serving
        return cls(cfg.ingest.max_id_chars, s.default_k, s.max_k, s.max_request_items)


@dataclass(frozen=True)
class ScoreRequest:
    user_id: str
    k: int
    exclude: frozenset[str]
    candidates: tuple[str, ...] | None


def check_id(value: Any, what: str, limits: Limits) -> str:
    """``value`` if it is a non-empty id of at most ``max_id_chars`` characters, without control
    characters."""
    if type(value) is not str:
        raise RequestError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise RequestError(f"{what} is empty")
    if len(value) > limits.max_id_chars:
        raise RequestError(f"{what} is longer than {limits.max_id_chars} characters ({len(value)})")
    if _CONTROL.search(value):
        raise RequestError(f"{what} holds a control character (NUL included)")
    return value


def check_k(value: Any, limits: Limits) -> int:
    if type(value) is not int or not 1 <= value <= limits.max_k:
        raise RequestError(f"k must be an integer from 1 to {limits.max_k}, got {value!r}")
    return value


def parse_k(text: str | None, limits: Limits) -> int:
    """The ``k`` query parameter (absent: ``default_k``)."""
    if text is None:
        return limits.default_k
    if not text.isascii() or not text.isdigit():
        raise RequestError(f"k must be an integer from 1 to {limits.max_k}, got {text[:40]!r}")
    return check_k(int(text), limits)


#: ``GET /v1/users/{user_id}/recommendations``: the path around the id (Starlette's ``{user_id}``
#: is one segment, ``[^/]+``, of the percent-decoded path).
LOOKUP_PREFIX, LOOKUP_SUFFIX = "/v1/users/", "/recommendations"
_LOOKUP_CUT = (len(LOOKUP_PREFIX), -len(LOOKUP_SUFFIX))


def plain_lookup(path: str, query: bytes, limits: Limits) -> tuple[str, int] | None:
    """``(user_id, k)`` of a lookup that the full route would answer with its list: a one-segment
    id that :func:`check_id` accepts, and no query or exactly ``k=<digits>`` with k from 1 to
    ``max_k``. None for anything else (another route, a bad or merely unusual request: ``k=5&``,
    ``%6B=5``, a repeated ``k``), which the FastAPI route then answers (its 4xx included) as it
    always has: the fast path (serving/app.py) takes only what it is sure of.

    ``path`` is the percent-decoded path (ASGI's ``scope["path"]``), ``query`` the raw query
    string."""
    if not (path.startswith(LOOKUP_PREFIX) and path.endswith(LOOKUP_SUFFIX)):
        return None
    user_id = path[_LOOKUP_CUT[0]:_LOOKUP_CUT[1]]
    if not user_id or "/" in user_id or len(user_id) > limits.max_id_chars or _CONTROL.search(user_id):
        return None
    if not query:
        return user_id, limits.default_k
    digits = query[2:]
    # bytes.isdigit: ASCII digits only; 8 of them at most, so int() stays cheap
    if query[:2] != b"k=" or not digits.isdigit() or len(digits) > 8:
        return None
    k = int(digits)
    return (user_id, k) if 1 <= k <= limits.max_k else None


def _id_list(value: Any, what: str, limits: Limits) -> list[str]:
    if type(value) is not list:
        raise RequestError(f"{what} must be a list of item ids, got {type(value).__name__}")
    if len(value) > limits.max_request_items:
        raise RequestError(f"{what} lists {len(value)} items, at most {limits.max_request_items} are allowed")
    return [check_id(v, f"{what}[{n}]", limits) for n, v in enumerate(value)]


def parse_score_request(body: bytes, limits: Limits) -> ScoreRequest:
    """``POST /v1/score``'s JSON body: ``{"user_id", "k"?, "exclude"?, "candidates"?}``, no
    other key."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the body is not JSON: {exc}") from None
    if type(doc) is not dict:
        raise RequestError(f"the body must be a JSON object, got {type(doc).__name__}")
    unknown = [key for key in doc if key not in SCORE_KEYS]
    if unknown:
        raise RequestError(f"unknown field {unknown[0][:40]!r} (allowed: {', '.join(SCORE_KEYS)})")
    if "user_id" not in doc:
        raise RequestError("user_id is missing")
    user_id = check_id(doc["user_id"], "user_id", limits)
    k = check_k(doc["k"], limits) if doc.get("k") is not None else limits.default_k
    exclude = frozenset(_id_list(doc["exclude"], "exclude", limits)) if doc.get("exclude") is not None else frozenset()
    candidates = doc.get("candidates")
    if candidates is not None:
        candidates = tuple(dict.fromkeys(_id_list(candidates, "candidates", limits)))
        if not candidates:
            raise RequestError("candidates is empty (leave it out to rank the whole catalogue)")
    return ScoreRequest(user_id, k, exclude, candidates)
