"""API keys: who is calling, from `Authorization: Bearer <key>`.

Keys are kept only as SHA-256 digests (config holds digests; keys from the
environment are hashed at start and the plain text dropped). A presented key
is hashed and compared with every stored digest through `hmac.compare_digest`.
A plain hash (no salt, no slow KDF) is enough because keys are long random
tokens, not passwords: nobody can guess a 256-bit key from its digest.

    python -m serve_app.access.keys new --id alice   # a fresh key and its config entry
    echo -n "$SECRET" | python -m serve_app.access.keys hash -   # digest of an existing key
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from serve_app.errors import Forbidden, Unauthorized
from serve_app.settings.access import ANONYMOUS_ID, AccessConfig, ApiKeyEntry, check_key_id

KEY_PREFIX = "wan_"
# Keys from the environment shorter than this are refused: a short secret is
# guessable whatever the hash.
MIN_SECRET_CHARS = 16
HEADER = "Authorization"
ADMIN_FLAG = "admin"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    # token_urlsafe has no ':' or ',', so a key always fits the env var's format.
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Limits:
    """A principal's effective limits (its key's overrides, else the config's defaults)."""

    rate_per_s: float
    burst: int
    read_rate_per_s: float  # 0: reads are not limited
    read_burst: int
    max_concurrent_jobs: int


@dataclass(frozen=True)
class Principal:
    """Who a request is from. `id` is the key's public id ('anonymous' with auth off)."""

    id: str
    limits: Limits
    admin: bool = False
    # False for the anonymous principal: no key was checked.
    authenticated: bool = True
    # False only for an anonymous principal when `limit_anonymous` is off.
    limited: bool = True


def _limits(config: AccessConfig, entry: ApiKeyEntry | None = None) -> Limits:
    def pick(name: str):
        value = getattr(entry, name) if entry is not None else None
        return getattr(config, name) if value is None else value

    return Limits(
        rate_per_s=pick("rate_per_s"),
        burst=pick("burst"),
        read_rate_per_s=pick("read_rate_per_s"),
        read_burst=pick("read_burst"),
        max_concurrent_jobs=pick("max_concurrent_jobs"),
    )


def check_admin_key(key: str, env_name: str) -> None:
    """The operator's admin key (from ${env_name}; '' = none) is as long as any API key must be:
    the admin routes purge the whole cache, and a short key is guessable however it is stored."""
    if not key:
        return
    if len(key) < MIN_SECRET_CHARS or key != key.strip():
        # The length only: the key itself never reaches a log.
        raise ValueError(
            f"${env_name} holds an admin key of {len(key)} characters; it must be at least {MIN_SECRET_CHARS} "
            "with no surrounding spaces (`python -m serve_app.access.keys new` makes one)"
        )


def parse_env_keys(value: str, env_name: str) -> list[ApiKeyEntry]:
    """`id:secret[:admin],...` -> entries holding digests. Errors name the entry, never the secret."""
    entries: list[ApiKeyEntry] = []
    for index, raw in enumerate(value.split(",")):
        item = raw.strip()
        if not item:
            continue  # a trailing comma is harmless
        parts = item.split(":")
        where = f"${env_name} entry {index + 1}"
        admin = False
        if len(parts) == 3 and parts[2] == ADMIN_FLAG:
            admin = True
            parts = parts[:2]
        if len(parts) != 2:
            raise ValueError(
                f"{where} is not 'id:secret' or 'id:secret:admin' ({len(parts) - 1} ':' found; "
                "secrets may not contain ':' or ',')"
            )
        key_id, secret = parts[0].strip(), parts[1]
        check_key_id(key_id, f"{where} id")
        if len(secret) < MIN_SECRET_CHARS or secret != secret.strip():
            raise ValueError(
                f"{where} ({key_id!r}): the secret must be at least {MIN_SECRET_CHARS} characters with no "
                f"surrounding spaces (got {len(secret)}); `python -m serve_app.access.keys new` makes one"
            )
        entries.append(ApiKeyEntry(id=key_id, sha256=hash_secret(secret), admin=admin))
    return entries


class ApiKeys:
    """The configured keys (config + environment) and the check of a request's header."""

    def __init__(self, config: AccessConfig, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        # None reads the process environment; tests pass a dict.
        env = os.environ if env is None else env
        env_entries: list[ApiKeyEntry] = []
        if config.api_keys_env:
            env_entries = parse_env_keys(env.get(config.api_keys_env, ""), config.api_keys_env)
        self.from_config = len(config.api_keys)
        self.from_env = len(env_entries)
        self._keys: list[tuple[str, Principal]] = []
        by_id: dict[str, str] = {}
        by_digest: dict[str, str] = {}
        sourced = [("config", e) for e in config.api_keys] + [(f"${config.api_keys_env}", e) for e in env_entries]
        for source, entry in sourced:
            if entry.id in by_id:
                raise ValueError(f"API key id {entry.id!r} is defined twice (in {by_id[entry.id]} and {source})")
            if entry.sha256 in by_digest:
                raise ValueError(
                    f"API keys {by_digest[entry.sha256]!r} and {entry.id!r} ({source}) have the same secret"
                )
            by_id[entry.id] = source
            by_digest[entry.sha256] = entry.id
            principal = Principal(id=entry.id, limits=_limits(config, entry), admin=entry.admin)
            self._keys.append((entry.sha256, principal))
        self.anonymous = Principal(
            id=ANONYMOUS_ID, limits=_limits(config), admin=False, authenticated=False, limited=config.limit_anonymous
        )

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def admin_count(self) -> int:
        return sum(1 for _, p in self._keys if p.admin)

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The principal of a request; Unauthorized (401) when auth is on and the key is missing or wrong.

        With auth off every request is the anonymous principal, whatever it sends.
        """
        if not self._keys:
            return self.anonymous
        if not authorization_header or not authorization_header.strip():
            raise Unauthorized(
                f"missing {HEADER} header: this service needs '{HEADER}: Bearer <api key>'", param=HEADER
            )
        token = bearer_token(authorization_header)
        # Nothing is quoted back: a client that sent the bare key has put it in the scheme's place.
        if token is None:
            raise Unauthorized(
                f"malformed {HEADER} header: expected 'Bearer <api key>' (one space, then the key)", param=HEADER
            )
        digest = hash_secret(token)
        found: Principal | None = None
        # Every digest is compared, so the time taken does not depend on which key matched.
        for stored, principal in self._keys:
            if hmac.compare_digest(stored, digest):
                found = principal
        if found is None:
            raise Unauthorized("unknown API key: it matches no configured key (revoked or mistyped?)", param=HEADER)
        return found


def bearer_token(authorization_header: str | None) -> str | None:
    """The key in 'Bearer <key>' (spaces around either part ignored); None when the header
    is missing or of another form (keys have no spaces)."""
    scheme, _, token = (authorization_header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def require_admin(principal: Principal) -> None:
    """Forbidden (403) unless the principal's key is an admin key."""
    if principal.admin:
        return
    if not principal.authenticated:
        raise Forbidden("this route needs an admin API key, and none is configured (auth is off)")
    raise Forbidden(f"API key {principal.id!r} is not an admin key; this route needs one")


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.access.keys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    hash_cmd = sub.add_parser("hash", help="print the sha256 of an existing key (for access.api_keys)")
    # '-' reads stdin: a secret on the command line lands in shell history and `ps`.
    hash_cmd.add_argument("secret", help="the key, or '-' to read it from stdin")
    new_cmd = sub.add_parser("new", help="generate a random key and print it with its config entry")
    new_cmd.add_argument("--id", default="my-key", help="id of the key in the printed entry")
    new_cmd.add_argument("--admin", action="store_true", help="mark the printed entry as an admin key")
    args = parser.parse_args(argv)
    if args.command == "hash":
        secret = sys.stdin.read().rstrip("\r\n") if args.secret == "-" else args.secret
        if not secret:
            parser.error("empty secret")
        print(f"sha256: {hash_secret(secret)}")
        return 0
    try:
        check_key_id(args.id, "--id")
    except ValueError as exc:
        parser.error(str(exc))
    secret = new_secret()
    print(f"# API key for {args.id!r}: give it to the client once; only the hash below is kept.")
    print(f"# key: {secret}")
    print("# serve_config.yaml, under args.access.api_keys:")
    print(f"- id: {args.id}")
    print(f"  sha256: {hash_secret(secret)}")
    if args.admin:
        print("  admin: true")
    print(f"# or in the environment: WAN_SERVE_API_KEYS={args.id}:{secret}{':admin' if args.admin else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
