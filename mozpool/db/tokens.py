"""API tokens, the cluster secret and per-boot device tokens.

A token is 32 random bytes, shown once when it is made; the database keeps only its SHA-256
(a slow password hash buys nothing for a secret of 256 random bits), so a copy of the database
gives nobody a working token.  Roles are ordered: each may do what the ones before it may.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from mozpool.db.pool import Cursor

ROLES = ("reader", "user", "operator", "admin")
#: Prefixes that say what a bearer token is, so a log line or a leaked string is recognisable.
USER_PREFIX = "mpt_"
SERVER_PREFIX = "mps_"
BOOT_PREFIX = "mpb_"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}\Z")
CLUSTER_SECRET = "cluster_secret"


def new_token(prefix: str = USER_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def role_at_least(role: str | None, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: str
    created: str
    revoked: str | None = None


class TokenError(ValueError):
    """A token cannot be made or revoked as asked (bad name or role, name taken, unknown)."""


def create(c: Cursor, name: str, role: str, now: str) -> str:
    """Make a token; the only time its text exists outside the caller."""
    if not NAME_RE.match(name):
        raise TokenError(f"token name {name!r}: letters, digits and _.@+- only, at most 64, starting with a letter or digit")
    if role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if c.scalar("SELECT 1 FROM tokens WHERE name = ? AND revoked IS NULL", (name,)) is not None:
        raise TokenError(f"a token named {name!r} exists (revoke it first, or choose another name)")
    c.execute("DELETE FROM tokens WHERE name = ?", (name,))  # a revoked one of that name
    token = new_token()
    c.execute("INSERT INTO tokens (name, role, hash, created, revoked) VALUES (?, ?, ?, ?, NULL)",
              (name, role, token_hash(token), now))
    return token


def revoke(c: Cursor, name: str, now: str) -> None:
    """Revoke by name at once; the row stays, marked, until the name is used again."""
    if c.scalar("SELECT 1 FROM tokens WHERE name = ? AND revoked IS NULL", (name,)) is None:
        raise TokenError(f"no live token named {name!r}")
    c.execute("UPDATE tokens SET revoked = ? WHERE name = ?", (now, name))


def list_tokens(c: Cursor) -> list[TokenInfo]:
    rows = c.execute("SELECT name, role, created, revoked FROM tokens ORDER BY name").fetchall()
    return [TokenInfo(r[0], r[1], str(r[2])[:19], None if r[3] is None else str(r[3])[:19]) for r in rows]


def lookup(c: Cursor, token: str) -> TokenInfo | None:
    """The live token whose text this is, if any."""
    row = c.execute("SELECT name, role, created FROM tokens WHERE hash = ? AND revoked IS NULL",
                    (token_hash(token),)).fetchone()
    return None if row is None else TokenInfo(row[0], row[1], str(row[2])[:19])


# --- the cluster secret: servers vouch for each other -----------------------------------------

def cluster_secret(c: Cursor) -> str:
    """The secret every server sharing this database signs its calls with; made on first use.
    Whoever can read the database can act as a server, as they could already rewrite it."""
    found = c.scalar("SELECT value FROM settings WHERE name = ?", (CLUSTER_SECRET,))
    if found is not None:
        return str(found)
    c.execute("INSERT INTO settings (name, value) VALUES (?, ?)", (CLUSTER_SECRET, secrets.token_hex(32)))
    return str(c.scalar("SELECT value FROM settings WHERE name = ?", (CLUSTER_SECRET,)))


def server_token(secret: str, fqdn: str) -> str:
    """The bearer token server ``fqdn`` sends to other servers: its name and a signature."""
    return f"{SERVER_PREFIX}{fqdn}.{_sign(secret, fqdn)}"


def server_of(secret: str, token: str) -> str | None:
    """The fqdn a server token vouches for, or None when it is not a valid one."""
    if not token.startswith(SERVER_PREFIX) or "." not in token:
        return None
    fqdn, _, signature = token[len(SERVER_PREFIX):].rpartition(".")
    return fqdn if fqdn and hmac.compare_digest(signature, _sign(secret, fqdn)) else None


def _sign(secret: str, fqdn: str) -> str:
    return hmac.new(secret.encode("utf-8"), b"server:" + fqdn.encode("utf-8"), hashlib.sha256).hexdigest()


# --- per-boot device tokens ------------------------------------------------------------------

def store_boot_token(c: Cursor, device: str, hashed: str) -> None:
    """The hash of the token of the device's next boot; any earlier one stops working."""
    c.execute("UPDATE devices SET boot_token = ? WHERE name = ?", (hashed, device))


def boot_token_matches(c: Cursor, device: str, token: str) -> bool:
    stored: Any = c.scalar("SELECT boot_token FROM devices WHERE name = ?", (device,))
    return stored is not None and hmac.compare_digest(str(stored), token_hash(token))
