"""Logins and sessions of `farm web`.

- Logins come from ``FARM_WEB_AUTH`` (``user:password`` pairs, the rules of
  ``FARM_FLOWER_AUTH``); passwords are compared in constant time.
- A session is a random cookie (HttpOnly, SameSite=Strict); Redis keeps, under the
  SHA-256 of the cookie, its user and its CSRF token for ``FARM_WEB_SESSION_TTL`` seconds
  after its last use, so sessions survive a restart of `farm web` and a logout ends one.
- Every POST carries the session's CSRF token (a hidden form field); a missing or wrong
  one is refused with 403.
- With ``--no-auth`` every visitor gets a session of the user ``anonymous`` (CSRF still
  applies).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import redis

from farm.errors import ConfigError
from farm.flower import parse_auth
from farm.settings import Settings

COOKIE = "farm_web"
ANONYMOUS = "anonymous"


def logins(settings: Settings, no_auth: bool) -> dict[str, str]:
    """The logins of ``FARM_WEB_AUTH`` (user -> password); empty only with ``no_auth``."""
    pairs = parse_auth(settings.web_auth, "FARM_WEB_AUTH")
    if not pairs and not no_auth:
        raise ConfigError(
            "farm web needs a login: set FARM_WEB_AUTH=user:password (anyone who reaches it "
            "can cancel scenes), or pass --no-auth to run it open"
        )
    if pairs and no_auth:
        raise ConfigError("--no-auth was given but FARM_WEB_AUTH is set: choose one")
    return dict(pair.split(":", 1) for pair in pairs)


def check_login(known: dict[str, str], user: str, password: str) -> bool:
    """Whether ``user`` and ``password`` match a login; the time taken does not depend on
    how much of either matches, nor on whether the user exists."""
    ok = False
    for name, secret in known.items():
        same_user = hmac.compare_digest(name.encode(), user.encode())
        same_password = hmac.compare_digest(secret.encode(), password.encode())
        ok |= same_user & same_password
    return ok


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Sessions kept in Redis (:meth:`farm.keys.Keys.web_session`)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.r, self.keys, self.ttl = client, settings.keys, settings.web_session_ttl

    def create(self, user: str) -> tuple[str, str]:
        """A new session for ``user``: its cookie and its CSRF token."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        key = self.keys.web_session(_digest(token))
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={"user": user, "csrf": csrf})
        pipe.expire(key, self.ttl)
        pipe.execute()
        return token, csrf

    def get(self, token: str | None) -> dict[str, str] | None:
        """The session of cookie ``token`` (``user``, ``csrf``), kept alive; None if none."""
        if not token or len(token) > 200:
            return None
        key = self.keys.web_session(_digest(token))
        pipe = self.r.pipeline()
        pipe.hgetall(key)
        pipe.expire(key, self.ttl)
        found = pipe.execute()[0]
        return found or None

    def end(self, token: str | None) -> None:
        if token:
            self.r.delete(self.keys.web_session(_digest(token)))


def csrf_ok(session: dict[str, str] | None, given: str | None) -> bool:
    """Whether a POST's CSRF token is its session's."""
    if not session or not given:
        return False
    return hmac.compare_digest(session["csrf"].encode(), given.encode())
