"""What `unicornish ctl WORDS` sends (ctl_request), the master's parser takes as the
same request (parse_request): the client and the server agree on every command."""

from __future__ import annotations

import json

import pytest

from unicornish.ctl.client import ctl_request
from unicornish.ctl.commands import COMMANDS, parse_request

CASES = [
    (["status"], ("status", {})),
    (["ttin"], ("ttin", {})),
    (["ttou"], ("ttou", {})),
    (["reload"], ("reload", {})),
    (["reopen"], ("reopen", {})),
    (["upgrade"], ("upgrade", {})),
    (["metrics"], ("metrics", {})),
    (["refork"], ("refork", {})),
    (["scale", "0"], ("scale", {"workers": 0})),
    (["scale", "7"], ("scale", {"workers": 7})),
    (["stop"], ("stop", {"quick": False})),
    (["stop", "--quick"], ("stop", {"quick": True})),
]


@pytest.mark.parametrize(("words", "expected"), CASES, ids=[" ".join(w) for w, _ in CASES])
def test_ctl_payload_and_the_same_words_parse_alike_on_the_master(words, expected):
    _control, payload = ctl_request(["--control", "/s", *words])
    assert parse_request(json.dumps(payload)) == expected
    assert parse_request(" ".join(words)) == expected


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_declared_example_means_the_same_from_ctl_and_as_words(command):
    for row in command.rows:
        words = command.describe(row.params).split()
        _control, payload = ctl_request(["--control", "/s", *words])
        assert parse_request(json.dumps(payload)) == parse_request(" ".join(words))
        assert parse_request(" ".join(words))[0] == command.name
