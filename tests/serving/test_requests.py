"""Request checks, without HTTP."""

from __future__ import annotations

import pytest

from streamrec.core.config import load_config
from streamrec.serving.requests import Limits, RequestError, ScoreRequest, parse_k, parse_score_request

LIMITS = Limits.of(load_config(config_file=None, env={"STREAMREC_INGEST__MAX_ID_CHARS": "8",
                                                       "STREAMREC_SERVING__MAX_REQUEST_ITEMS": "3"}))


@pytest.mark.parametrize("text", ["0", "-1", "101", "1.5", "ten", "", " 5", "٣"])
def test_bad_k(text):
    with pytest.raises(RequestError) as err:
        parse_k(text, LIMITS)
    assert err.value.status == 400 and "k must be an integer from 1 to 100" in err.value.reason


def test_good_score_requests():
    assert parse_score_request(b'{"user_id": "u1"}', LIMITS) == ScoreRequest("u1", 10, frozenset(), None)
    req = parse_score_request(b'{"user_id": "u1", "k": 100, "exclude": null, "candidates": ["b", "a", "b"]}', LIMITS)
    assert req.k == 100 and req.candidates == ("b", "a")


@pytest.mark.parametrize("body, why", [
    (b"", "not JSON"),
    (b'{"user_id": "u1"', "not JSON"),
    (b'{"user_id": "u1", "k": NaN}', "not JSON"),
    (b"\x00", "not JSON"),
    (b'"u1"', "must be a JSON object"),
    (b"{}", "user_id is missing"),
    (b'{"user_id": ""}', "user_id is empty"),
    (b'{"user_id": "123456789"}', "longer than 8"),
    (b'{"user_id": "u\\u0000"}', "control character"),
    (b'{"user_id": ["u1"]}', "user_id must be a string"),
    (b'{"user_id": "u1", "k": "5"}', "k must be an integer"),
    (b'{"user_id": "u1", "k": 5.0}', "k must be an integer"),
    (b'{"user_id": "u1", "k": false}', "k must be an integer"),
    (b'{"user_id": "u1", "exclude": {"a": 1}}', "exclude must be a list"),
    (b'{"user_id": "u1", "exclude": ["a", 2]}', "exclude[1] must be a string"),
    (b'{"user_id": "u1", "exclude": ["a", "b", "c", "d"]}', "at most 3"),
    (b'{"user_id": "u1", "candidates": []}', "candidates is empty"),
    (b'{"user_id": "u1", "user": "u2"}', "unknown field 'user'"),
])
def test_bad_score_requests(body, why):
    with pytest.raises(RequestError) as err:
        parse_score_request(body, LIMITS)
    assert err.value.status == 400 and why in err.value.reason, err.value.reason
