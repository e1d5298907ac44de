"""API keys: from config and the environment, who is anonymous, 401s and 403s that never echo a key, the key CLI."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import yaml

from serve_app.access import keys as keys_module
from serve_app.access.config import AccessConfig
from serve_app.access.keys import ApiKeys, hash_secret, parse_env_keys, require_admin
from serve_app.errors import Forbidden, Unauthorized
from tests.helpers.access import ADMIN, ALICE, BOB, keyed_config


def test_env_keys_are_parsed_hashed_and_may_be_admin():
    entries = parse_env_keys(f" bob:{BOB}, ops2:{ADMIN}:admin ,", "KEYS")
    assert [(e.id, e.sha256, e.admin) for e in entries] == [
        ("bob", hash_secret(BOB), False),
        ("ops2", hash_secret(ADMIN), True),
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        (f"bob{BOB}", "entry 1 is not 'id:secret'"),
        (f"bob:{BOB}:root", "entry 1 is not 'id:secret'"),
        (f"bob:{BOB},carol:short-secret", "entry 2 .*'carol'.*at least 16"),
        (f"bad id:{BOB}", "entry 1 id='bad id'"),
    ],
)
def test_bad_env_keys_name_the_entry_and_never_the_secret(value, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_env_keys(value, "KEYS")
    assert BOB not in str(err.value) and "short-secret" not in str(err.value)


def test_env_keys_join_config_keys_and_clashes_are_refused():
    config = keyed_config(api_keys_env="MY_KEYS")
    keys = ApiKeys(config, {"MY_KEYS": f"bob:{BOB}"})
    assert (len(keys), keys.from_config, keys.from_env, keys.admin_count) == (3, 2, 1, 1)
    assert keys.authenticate(f"Bearer {BOB}").id == "bob"
    with pytest.raises(ValueError, match="'alice' is defined twice"):
        ApiKeys(config, {"MY_KEYS": f"alice:{BOB}"})
    with pytest.raises(ValueError, match="same secret"):
        ApiKeys(config, {"MY_KEYS": f"carol:{ALICE}"})


def test_env_none_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("WAN_SERVE_API_KEYS", f"bob:{BOB}")
    assert ApiKeys(AccessConfig()).authenticate(f"Bearer {BOB}").id == "bob"
    monkeypatch.delenv("WAN_SERVE_API_KEYS")
    assert not ApiKeys(AccessConfig()).enabled


def test_auth_is_off_without_keys_and_everyone_is_anonymous():
    keys = ApiKeys(AccessConfig(limit_anonymous=True), {})
    assert not keys.enabled
    for header in (None, "", "Bearer whatever", "garbage"):
        principal = keys.authenticate(header)
        assert (principal.id, principal.authenticated, principal.admin, principal.limited) == (
            "anonymous",
            False,
            False,
            True,
        )
    # The default: a keyless service is not limited per client.
    assert not ApiKeys(AccessConfig(), {}).authenticate(None).limited


def test_a_key_gets_its_overrides_and_the_defaults_for_the_rest():
    keys = ApiKeys(keyed_config(rate_per_s=0.5), {})
    alice = keys.authenticate(f"Bearer {ALICE}")
    assert (alice.id, alice.admin, alice.authenticated) == ("alice", False, True)
    assert (alice.limits.burst, alice.limits.max_concurrent_jobs, alice.limits.rate_per_s) == (2, 1, 0.5)
    ops = keys.authenticate(f"bearer   {ADMIN} ")
    assert ops.admin and ops.limits.burst == 10 and ops.limits.max_concurrent_jobs == 4


@pytest.mark.parametrize(
    "header, words",
    [
        (None, "missing Authorization header"),
        ("   ", "missing Authorization header"),
        (ALICE, "malformed Authorization header"),
        (f"Basic {ALICE}", "malformed Authorization header"),
        ("Bearer", "malformed Authorization header"),
        (f"Bearer {ALICE} extra", "malformed Authorization header"),
        ("Bearer wan_not-a-configured-key-000000", "unknown API key"),
    ],
)
def test_401s_say_which_problem_and_never_echo_the_key(header, words):
    keys = ApiKeys(keyed_config(), {})
    with pytest.raises(Unauthorized) as err:
        keys.authenticate(header)
    body = err.value.to_dict()["error"]
    assert err.value.status_code == 401
    assert body["code"] == "unauthorized" and body["param"] == "Authorization"
    assert words in body["message"]
    assert ALICE not in json.dumps(body) and "wan_not-a-configured" not in json.dumps(body)


def test_require_admin_403s_say_why():
    keys = ApiKeys(keyed_config(), {})
    require_admin(keys.authenticate(f"Bearer {ADMIN}"))
    with pytest.raises(Forbidden, match="'alice' is not an admin key") as err:
        require_admin(keys.authenticate(f"Bearer {ALICE}"))
    assert err.value.status_code == 403 and err.value.to_dict()["error"]["code"] == "forbidden"
    with pytest.raises(Forbidden, match="auth is off"):
        require_admin(ApiKeys(AccessConfig(), {}).authenticate(None))


def test_cli_hash_reads_stdin_and_new_prints_a_working_entry(monkeypatch, capsys):
    assert keys_module._main(["hash", ALICE]) == 0
    assert capsys.readouterr().out == f"sha256: {hashlib.sha256(ALICE.encode()).hexdigest()}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(ALICE + "\n"))
    assert keys_module._main(["hash", "-"]) == 0
    assert capsys.readouterr().out == f"sha256: {hash_secret(ALICE)}\n"

    assert keys_module._main(["new", "--id", "carol", "--admin"]) == 0
    out = capsys.readouterr().out
    secret = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("# key: "))
    entries = yaml.safe_load(out)  # the comment lines drop out; the entry is what gets pasted
    keys = ApiKeys(AccessConfig(api_keys=entries, api_keys_env=""), {})
    principal = keys.authenticate(f"Bearer {secret}")
    assert (principal.id, principal.admin) == ("carol", True)
    # The env form printed alongside works too.
    env_value = out.strip().splitlines()[-1].split("WAN_SERVE_API_KEYS=", 1)[1]
    assert parse_env_keys(env_value, "X")[0].sha256 == entries[0]["sha256"]
