"""Who may call the HTTP API: bearer credentials, scopes, 401 and 403.

Every route of the API declares what it needs, or :func:`create_app` refuses to build
(:func:`check_routes`): deny is the default, never an omission.

- ``dependencies=[require_scope("read")]``: a bearer credential with that scope (give
  several scopes for "any of them"). Anonymous, or a token that is unknown, expired or
  revoked: 401 with ``WWW-Authenticate: Bearer``; a valid one without the scope: 403.
- ``openapi_extra=PUBLIC``: no credential (``/health``; ``POST /v1/enroll``, which a
  one-time enrollment token in its body authenticates; ``/metrics`` when
  ``api.metrics_public``). The OpenAPI document says ``security: []`` for it.

A credential is an API token (``fit_...``, :mod:`cloud_ingest.apitokens`, looked up in
the store) or, when ``[api.oidc]`` is on, a JWT from the operator's identity provider
(:mod:`cloud_ingest.oidc`). :func:`install` adds the error handlers and the OpenAPI
security schemes; each operation lists its scopes in ``security`` (OpenAPI 3.1 allows
role names for any scheme) and in a ``Scope:`` line of its description.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from cloud_ingest.apitokens import TOKEN_PREFIX, ApiToken, Scope, token_id, token_sha256
from cloud_ingest.config import ApiSettings
from cloud_ingest.errors import IngestError, StorageError
from cloud_ingest.oidc import IdentityProviderError, JwksCache, OidcError, OidcVerifier
from cloud_ingest.store.base import Store

log = logging.getLogger(__name__)

REALM = "fleet-ingest"
TOKEN_SCHEME = "apiToken"  # noqa: S105 (a scheme name, not a secret)
OIDC_SCHEME = "oidc"
# An operation without credentials, as the OpenAPI document spells it.
PUBLIC: dict[str, Any] = {"security": []}
# last_used_at is written at most this often per token: not a write per request.
TOUCH_INTERVAL = timedelta(seconds=60)
# While the store cannot answer, a token it confirmed this recently still opens what
# works without the store (/metrics): the outage is when the metrics matter. Every
# other endpoint needs the store and answers 503 anyway.
STALE_IF_ERROR = timedelta(hours=1)
_SEEN_MAX = 1000


class AuthenticationError(IngestError):
    """No credential, or one that is not valid (401)."""


class ScopeError(IngestError):
    """A valid credential without the scope the endpoint needs (403)."""

    def __init__(self, message: str, scopes: tuple[Scope, ...]) -> None:
        super().__init__(message)
        self.scopes = scopes


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: ``token:<id>`` (its name) or ``oidc:<sub>``, and what they may do."""

    subject: str
    scopes: frozenset[Scope]
    via: Literal["token", "oidc"]


class Access:
    """Turns an ``Authorization`` header into a :class:`Principal`."""

    def __init__(
        self,
        store: Store,
        *,
        tokens: bool = True,
        oidc: OidcVerifier | None = None,
        metrics_public: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not tokens and oidc is None:
            raise ValueError("no way to authenticate: enable tokens or OIDC")
        self.store = store
        self.tokens = tokens
        self.oidc = oidc
        self.metrics_public = metrics_public
        self._clock = clock
        # sha256 of a token -> (its row, when the store last confirmed it)
        self._seen: dict[bytes, tuple[ApiToken, datetime]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationError("credentials needed: Authorization: Bearer <token>")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthenticationError("credentials needed: Authorization: Bearer <token>")
        if credential.startswith(TOKEN_PREFIX) and self.tokens:
            return await self._api_token(credential)
        if self.oidc is not None:
            try:
                identity = await self.oidc.verify(credential)
            except OidcError as err:
                raise AuthenticationError(f"invalid token: {err}") from None
            return Principal(f"oidc:{identity.subject}", identity.scopes, "oidc")
        raise AuthenticationError("invalid token")

    async def _api_token(self, credential: str) -> Principal:
        ident = token_id(credential)
        now = self._clock()
        try:
            row = None if ident is None else await self.store.get_api_token(ident)
        except StorageError:
            row = self._stale(credential, now)
            if row is None:
                raise
            return Principal(f"token:{row.id} ({row.name})", row.scopes, "token")
        # One answer for every failure: a caller learns nothing about which ids exist.
        if row is None or not row.matches(credential):
            raise AuthenticationError("invalid token")
        state = row.state(now)
        if state != "active":
            self._seen.pop(row.sha256, None)
            raise AuthenticationError(f"invalid token: {state}")
        if len(self._seen) >= _SEEN_MAX and row.sha256 not in self._seen:
            del self._seen[next(iter(self._seen))]
        self._seen[row.sha256] = (row, now)
        if row.last_used_at is None or now - row.last_used_at >= TOUCH_INTERVAL:
            try:
                await self.store.touch_api_token(row.id, now)
            except StorageError as err:
                log.warning("cannot record the use of API token %s: %s", row.id, err)
        return Principal(f"token:{row.id} ({row.name})", row.scopes, "token")

    def _stale(self, credential: str, now: datetime) -> ApiToken | None:
        seen = self._seen.get(token_sha256(credential))
        if seen is None:
            return None
        row, confirmed_at = seen
        if now - confirmed_at > STALE_IF_ERROR or row.state(now) != "active":
            return None
        return row


def access_from_settings(store: Store, api: ApiSettings) -> Access:
    """The :class:`Access` that ``[api]`` describes, over ``store``'s tokens."""
    oidc = None
    if api.oidc.enabled:
        o = api.oidc
        jwks = JwksCache(
            o.jwks_url,
            timeout_s=o.timeout_s,
            refresh_min_s=o.jwks_refresh_min_s,
            max_age_s=o.jwks_max_age_s,
        )
        oidc = OidcVerifier(
            issuer=o.issuer,
            audience=o.audience,
            jwks=jwks,
            scope_claim=o.scope_claim,
            scope_map=o.scope_map,
            leeway_s=o.leeway_s,
        )
    return Access(store, tokens=api.tokens, oidc=oidc, metrics_public=api.metrics_public)


class ScopeRequirement:
    """The dependency :func:`require_scope` makes: any one of ``scopes`` will do."""

    def __init__(self, scopes: tuple[Scope, ...]) -> None:
        if not scopes:
            raise ValueError("a requirement needs a scope (use PUBLIC for none)")
        self.scopes = scopes

    async def __call__(self, request: Request) -> Principal:
        access: Access = request.app.state.access
        principal = await access.authenticate(request.headers.get("authorization"))
        if principal.scopes.isdisjoint(self.scopes):
            needed = " or ".join(self.scopes)
            raise ScopeError(f"this needs the {needed} scope", self.scopes)
        request.state.principal = principal
        return principal


async def authorize(request: Request, *scopes: Scope) -> Principal:
    """Inside a :data:`PUBLIC` handler that accepts a bearer credential as one way in
    (``POST /v1/enroll`` without a one-time token in its body): the caller, with any
    one of ``scopes``; 401 or 403 as :func:`require_scope` answers."""
    return await ScopeRequirement(scopes)(request)


def require_scope(*scopes: Scope) -> Any:
    """A route dependency: a bearer credential with any one of ``scopes``."""
    return Depends(ScopeRequirement(scopes))


def route_scopes(route: APIRoute) -> tuple[Scope, ...] | None:
    """The scopes a route needs; ``None`` when it is :data:`PUBLIC`.

    :class:`RuntimeError` for a route that declares neither, or both, or two
    requirements: every route states its access once.
    """
    found = [d.dependency for d in route.dependencies if isinstance(d.dependency, ScopeRequirement)]
    public = (route.openapi_extra or {}).get("security") == []
    if public and not found:
        return None
    if len(found) == 1 and not public:
        return found[0].scopes
    raise RuntimeError(
        f"route {sorted(route.methods or ())} {route.path} must declare its access once: "
        "dependencies=[require_scope(...)] or openapi_extra=PUBLIC"
    )


def check_routes(app: FastAPI) -> dict[tuple[str, str], tuple[Scope, ...] | None]:
    """Every operation's scopes (``None``: public); raises for an undeclared one."""
    return {
        (method, route.path): route_scopes(route)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods or ())
    }


async def denied(request: Request) -> JSONResponse | None:
    """The 401 or 403 that ``request`` earns on its route, else None (a public route, or
    credentials with the scope). For the validation error handler: FastAPI reads and
    validates a body before it runs the route's dependencies, so without this an
    anonymous caller would get 422s that describe the API."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return None
    scopes = route_scopes(route)
    if scopes is None:
        return None
    try:
        await ScopeRequirement(scopes)(request)
    except AuthenticationError as err:
        return _unauthorized(request, err)
    except ScopeError as err:
        return _forbidden(request, err)
    return None


def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    # RFC 6750: no credential, no error code; a bad one, invalid_token.
    challenge = f'Bearer realm="{REALM}"'
    if request.headers.get("authorization"):
        challenge += ', error="invalid_token"'
    return JSONResponse(
        {"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": challenge}
    )


def _forbidden(request: Request, exc: Exception) -> JSONResponse:
    scopes = exc.scopes if isinstance(exc, ScopeError) else ()
    challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{" ".join(scopes)}"'
    return JSONResponse(
        {"detail": str(exc)}, status_code=403, headers={"WWW-Authenticate": challenge}
    )


def _provider_down(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"identity provider unavailable: {exc}"}, status_code=503)


_AUTH_RESPONSES = {
    "401": {"description": "No credential, or an unknown, expired or revoked one"},
    "403": {"description": "The credential lacks the scope"},
}


def install(app: FastAPI, access: Access) -> None:
    """Wire ``access`` into ``app``: error handlers and the OpenAPI security schemes.
    Call it after the routes are added (it checks each declares its access)."""
    app.state.access = access
    check_routes(app)
    app.add_exception_handler(AuthenticationError, _unauthorized)
    app.add_exception_handler(ScopeError, _forbidden)
    app.add_exception_handler(IdentityProviderError, _provider_down)
    schemes: dict[str, dict[str, Any]] = {}
    if access.tokens:
        schemes[TOKEN_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (fleet-ingest token create --scope ...)",
        }
    if access.oidc is not None:
        schemes[OIDC_SCHEME] = {
            "type": "openIdConnect",
            "openIdConnectUrl": access.oidc.issuer.rstrip("/")
            + "/.well-known/openid-configuration",
            "description": "A JWT from the fleet's identity provider",
        }

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # Again: a route added after install must declare its access too.
            _secure(original(), check_routes(app), schemes)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _secure(
    doc: dict[str, Any],
    scopes: dict[tuple[str, str], tuple[Scope, ...] | None],
    schemes: dict[str, dict[str, Any]],
) -> None:
    doc.setdefault("components", {})["securitySchemes"] = schemes
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            needed = scopes.get((method.upper(), path))
            if needed is None:
                op["security"] = []
                continue
            op["security"] = [{name: [s]} for name in schemes for s in needed]
            line = f"Scope: {' or '.join(needed)}."
            op["description"] = f"{op.get('description', '')}\n\n{line}".strip()
            op["responses"].update(_AUTH_RESPONSES)
