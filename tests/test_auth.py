"""Unit tests for switchd.auth: bearer header parsing, HS256 verification, minting."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time

import jwt
import pytest

from switchd.auth import (
    ADMIN,
    PUBLISHER,
    AuthError,
    Principal,
    TokenVerifier,
    bearer_token,
    mint,
    parse_topics,
    verify,
)

SECRET = "test-secret-" + "x" * 40
ADMIN_SECRET = "test-admin-secret-" + "y" * 40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def forged(header: dict[str, object], claims: dict[str, object], signature: bytes) -> str:
    """A token assembled by hand, for algorithms this test cannot (or must not) sign with."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}" if signature else f"{head}.{body}."


# --- bearer_token -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc.def.ghi",
        "bearer abc.def.ghi",
        "BEARER abc.def.ghi",
        "BeArEr abc.def.ghi",
        "  Bearer abc.def.ghi  ",
        "Bearer   abc.def.ghi",
    ],
)
def test_bearer_scheme_is_case_insensitive(header: str) -> None:
    assert bearer_token(header) == "abc.def.ghi"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic dXNlcjpwYXNz",
        "Token abc.def.ghi",
        "abc.def.ghi",
        "Bearerabc.def.ghi",
    ],
)
def test_bad_authorization_header(header: str | None) -> None:
    with pytest.raises(AuthError) as info:
        bearer_token(header)
    assert info.value.reason
    assert str(info.value) == info.value.reason


# --- verify: authors ----------------------------------------------------------------------


def test_capitalised_author_claim_only() -> None:
    principal = verify(hs256({"Author": "svc"}), SECRET)
    assert principal == Principal(author="svc", kind=PUBLISHER)


def test_lowercase_author_claim() -> None:
    assert verify(hs256({"author": "billing"}), SECRET).author == "billing"


def test_author_claim_preferred_over_capitalised() -> None:
    assert verify(hs256({"author": "lower", "Author": "upper"}), SECRET).author == "lower"


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"sub": "svc"},
        {"author": ""},
        {"Author": ""},
        {"author": 42},
        {"author": None},
        {"author": ["svc"]},
        {"AUTHOR": "svc"},
    ],
)
def test_missing_or_bad_author_is_rejected(claims: dict[str, object]) -> None:
    with pytest.raises(AuthError) as info:
        verify(hs256(claims), SECRET)
    assert "author" in info.value.reason


# --- verify: time claims -------------------------------------------------------------------


def test_expired_token_is_rejected() -> None:
    token = hs256({"author": "svc", "exp": int(time.time()) - 120})
    with pytest.raises(AuthError) as info:
        verify(token, SECRET)
    assert "expired" in info.value.reason


def test_not_yet_valid_token_is_rejected() -> None:
    token = hs256({"author": "svc", "nbf": int(time.time()) + 300})
    with pytest.raises(AuthError) as info:
        verify(token, SECRET)
    assert "not valid yet" in info.value.reason


def test_valid_time_window_is_accepted() -> None:
    now = int(time.time())
    token = hs256({"author": "svc", "nbf": now - 60, "exp": now + 300, "iat": now})
    assert verify(token, SECRET).author == "svc"


def test_small_clock_skew_is_tolerated() -> None:
    token = hs256({"author": "svc", "exp": int(time.time()) - 2})
    assert verify(token, SECRET).author == "svc"


# --- verify: algorithms and signatures -----------------------------------------------------


def test_alg_none_token_is_rejected() -> None:
    token = forged({"alg": "none", "typ": "JWT"}, {"author": "svc", "scope": "admin"}, b"")
    with pytest.raises(AuthError):
        verify(token, SECRET)


def test_alg_none_token_from_pyjwt_is_rejected() -> None:
    token = jwt.encode({"author": "svc", "scope": "admin"}, None, algorithm="none")
    with pytest.raises(AuthError):
        verify(token, SECRET)


def test_hs512_token_with_the_right_secret_is_rejected() -> None:
    secret = "k" * 64
    token = jwt.encode({"author": "svc"}, secret, algorithm="HS512")
    with pytest.raises(AuthError):
        verify(token, secret)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "HS384"])
def test_other_algorithm_headers_are_rejected(alg: str) -> None:
    token = forged({"alg": alg, "typ": "JWT"}, {"author": "svc"}, b"\x01" * 64)
    with pytest.raises(AuthError):
        verify(token, SECRET)


def test_rs256_header_with_hmac_of_secret_is_rejected() -> None:
    # Key-confusion attempt: claim RS256 but sign with HMAC over the shared secret.
    head = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"author": "svc", "scope": "admin"}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(AuthError):
        verify(f"{head}.{body}.{b64url(sig)}", SECRET)


def test_wrong_secret_is_rejected() -> None:
    token = hs256({"author": "svc"}, secret="some-other-secret-" + "y" * 40)
    with pytest.raises(AuthError) as info:
        verify(token, SECRET)
    assert info.value.reason.startswith("invalid token")


def test_tampered_claims_are_rejected() -> None:
    token = hs256({"author": "svc"})
    head, _, sig = token.split(".")
    evil = b64url(json.dumps({"author": "svc", "scope": "admin"}).encode())
    with pytest.raises(AuthError):
        verify(f"{head}.{evil}.{sig}", SECRET)


@pytest.mark.parametrize("token", ["", "garbage", "a.b", "a.b.c", "...", "Bearer x.y.z"])
def test_malformed_tokens_are_rejected(token: str) -> None:
    with pytest.raises(AuthError):
        verify(token, SECRET)


# --- verify: scope ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "admin"),
    [
        ("admin", True),
        ("admin other", True),
        ("other admin", True),
        (["admin"], True),
        (["read", "admin"], True),
        ("administrator", False),
        ("read write", False),
        (["read"], False),
        ([], False),
        ("", False),
        ("ADMIN", False),
        (["admin other"], False),
        ({"admin": True}, False),
        (1, False),
    ],
)
def test_scope_decides_admin_for_admin_secret_tokens(scope: object, admin: bool) -> None:
    principal = verify(hs256({"author": "ops", "scope": scope}, ADMIN_SECRET), ADMIN_SECRET, ADMIN)
    assert principal.admin is admin
    publisher = verify(hs256({"author": "svc", "scope": scope}), SECRET, PUBLISHER)
    assert publisher.admin is False  # a publisher token never is, whatever its scope
    assert publisher.admin_scope is principal.admin_scope


def test_no_scope_is_not_admin() -> None:
    assert verify(hs256({"author": "ops"}, ADMIN_SECRET), ADMIN_SECRET, ADMIN).admin is False


# --- mint --------------------------------------------------------------------------------------


def test_mint_round_trips_through_verify() -> None:
    token = mint(SECRET, "svc")
    assert verify(token, SECRET) == Principal(author="svc", kind=PUBLISHER)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"


def test_mint_admin_sets_scope() -> None:
    token = mint(ADMIN_SECRET, "ops", admin=True)
    claims = jwt.decode(token, ADMIN_SECRET, algorithms=["HS256"])
    assert claims["scope"] == "admin"
    assert claims["author"] == "ops"
    assert verify(token, ADMIN_SECRET, ADMIN) == Principal("ops", ADMIN, admin_scope=True)
    assert verify(token, ADMIN_SECRET, ADMIN).admin


def test_mint_without_ttl_has_no_expiry() -> None:
    claims = jwt.decode(mint(SECRET, "svc"), SECRET, algorithms=["HS256"])
    assert "exp" not in claims
    assert "scope" not in claims
    assert abs(claims["iat"] - time.time()) < 5


def test_mint_with_ttl_sets_exp() -> None:
    before = int(time.time())
    claims = jwt.decode(mint(SECRET, "svc", ttl=3600), SECRET, algorithms=["HS256"])
    after = int(time.time())
    assert claims["exp"] == claims["iat"] + 3600
    assert before + 3600 <= claims["exp"] <= after + 3600


def test_minted_token_with_elapsed_ttl_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real - 3600)
    token = mint(SECRET, "svc", ttl=60)
    monkeypatch.undo()
    with pytest.raises(AuthError) as info:
        verify(token, SECRET)
    assert "expired" in info.value.reason


def test_minted_token_fails_with_another_secret() -> None:
    with pytest.raises(AuthError):
        verify(mint(SECRET, "svc"), "another-secret-" + "z" * 40)


def test_token_verifier_caches_within_the_validity_window(monkeypatch) -> None:
    from switchd import auth

    calls = []
    real = auth._verify
    monkeypatch.setattr(auth, "_verify", lambda t, keys: calls.append(t) or real(t, keys))
    verifier = auth.TokenVerifier([SECRET])
    exp = int(time.time()) + 60
    token = jwt.encode({"Author": "svc", "exp": exp}, SECRET, algorithm="HS256")
    assert verifier.verify(token).author == "svc"
    assert verifier.verify(token).author == "svc"
    assert len(calls) == 1  # the second one came from the cache
    assert verifier._cache[token][2] == exp + auth.LEEWAY_SECONDS
    later = exp + auth.LEEWAY_SECONDS + 1
    monkeypatch.setattr(auth.time, "time", lambda: later)
    verifier.verify(token)  # past the window: verified again (pyjwt checks exp then)
    assert len(calls) == 2
    odd = jwt.encode({"Author": "svc", "exp": str(exp)}, SECRET, algorithm="HS256")
    with contextlib.suppress(auth.AuthError):
        verifier.verify(odd)
    assert odd not in verifier._cache  # a non-numeric exp is never cached


# --- two kinds of secret, rotation ---------------------------------------------------------

PREVIOUS = "test-previous-secret-" + "p" * 40
ADMIN_PREVIOUS = "test-previous-admin-secret-" + "q" * 40


def rotating() -> TokenVerifier:
    return TokenVerifier([SECRET, PREVIOUS], [ADMIN_SECRET, ADMIN_PREVIOUS])


@pytest.mark.parametrize(
    ("secret", "kind"),
    [(SECRET, PUBLISHER), (PREVIOUS, PUBLISHER), (ADMIN_SECRET, ADMIN), (ADMIN_PREVIOUS, ADMIN)],
)
def test_every_configured_secret_verifies_as_its_kind(secret: str, kind: str) -> None:
    principal = rotating().verify(mint(secret, "ops", admin=True))
    assert (principal.author, principal.kind, principal.admin) == ("ops", kind, kind == ADMIN)


def test_unknown_secret_is_refused_and_expiry_is_reported_for_a_previous_secret() -> None:
    with pytest.raises(AuthError) as info:
        rotating().verify(mint("an-unknown-secret-" + "u" * 40, "svc"))
    assert "Signature verification failed" in info.value.reason
    expired = hs256({"Author": "svc", "exp": int(time.time()) - 3600}, ADMIN_PREVIOUS)
    with pytest.raises(AuthError) as info:
        rotating().verify(expired)
    assert "expired" in info.value.reason


def test_current_publisher_secret_costs_one_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The publish path: a token signed with the current publisher secret is checked once,
    however many other secrets are configured; the others are tried only when it fails."""
    from switchd import auth

    tried: list[str] = []
    real = auth._decode
    monkeypatch.setattr(auth, "_decode", lambda t, s: tried.append(s) or real(t, s))
    verifier = rotating()
    for secret, expected in (
        (SECRET, [SECRET]),
        (ADMIN_SECRET, [SECRET, ADMIN_SECRET]),
        (PREVIOUS, [SECRET, ADMIN_SECRET, PREVIOUS]),
    ):
        tried.clear()
        verifier.verify(mint(secret, "svc", ttl=60))
        assert tried == expected
    tried.clear()
    token = mint(SECRET, "another", ttl=60)
    assert verifier.verify(token) == verifier.verify(token)
    assert tried == [SECRET]  # the second one came from the cache


def test_a_publisher_secret_can_never_be_an_admin_secret() -> None:
    with pytest.raises(ValueError):
        TokenVerifier([SECRET, PREVIOUS], [PREVIOUS])
    assert TokenVerifier([SECRET], [None, None]).admin_configured is False
    assert TokenVerifier([SECRET, None], [ADMIN_SECRET, None]).admin_configured is True


# --- topics ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("orders.created", True),
        ("orders.eu.created", True),
        ("orders.*", True),  # `orders.` + "*": a topic may be named so
        ("orders", False),
        ("orders.", False),
        ("ordersX", False),
        ("ordersX.created", False),
        ("xorders.created", False),
        ("ORDERS.created", False),
        ("billing", True),
        ("billing.refunds", False),
        ("billing*", False),
    ],
)
def test_topics_claim_matches_names_and_prefixes(topic: str, allowed: bool) -> None:
    token = mint(SECRET, "svc", topics=["orders.*", "billing"])
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["topics"] == ["orders.*", "billing"]
    assert verify(token, SECRET).may_publish(topic) is allowed


def test_no_topics_claim_allows_every_topic_and_an_empty_one_none() -> None:
    assert verify(mint(SECRET, "svc"), SECRET).may_publish("anything")
    assert not verify(mint(SECRET, "svc", topics=[]), SECRET).may_publish("anything")
    assert parse_topics(["a.*", "b", "b"]).exact == frozenset({"b"})


@pytest.mark.parametrize(
    "topics",
    ["orders", ["orders", 1], [None], [["orders"]], {"orders": True}, [""], [".*"], ["x" * 256]],
)
def test_malformed_topics_claim_makes_the_token_invalid(topics: object) -> None:
    with pytest.raises(AuthError) as info:
        verify(hs256({"Author": "svc", "topics": topics}), SECRET)
    assert "invalid 'topics' claim" in info.value.reason
