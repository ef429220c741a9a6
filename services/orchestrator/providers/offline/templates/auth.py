"""The authentication feature: users, PBKDF2 password hashes, bearer tokens, a guard on every entity route.

Its files live in the `app/auth` package and `tests/auth`, apart from the entities, so no
entity name can clash with them; only the model class names AuthUser and AuthToken are
reserved while the feature is on.
"""

from __future__ import annotations

import re

from services.orchestrator.providers.offline.layout import ProjectLayout
from services.orchestrator.providers.offline.templates.common import py

PACKAGE = '"""Authentication: users, password hashes, bearer tokens and the route guard."""\n'

MODELS = '''"""The users who may sign in, and the bearer tokens they hold."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class AuthUser(Base):
    """A user who can sign in with a username and a password."""

    __tablename__ = "_auth_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))


class AuthToken(Base):
    """A bearer token of a user; only its SHA-256 digest is stored."""

    __tablename__ = "_auth_token"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("_auth_user.id", ondelete="CASCADE"), index=True
    )
'''

SCHEMAS = '''"""The request and response bodies of the authentication routes."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

Username = Annotated[str, Meta(min_length=3, max_length=150, pattern=r"^[A-Za-z0-9_.@-]+$")]
Password = Annotated[str, Meta(min_length=8, max_length=1024)]


class AuthCredentials(Struct, forbid_unknown_fields=True):
    """A username and a password (to register, or to get a token)."""

    username: Username
    password: Password


class AuthUserRead(Struct):
    """A user as the API returns it (never the password hash)."""

    id: int
    username: str


class AuthTokenRead(Struct):
    """A bearer token: send it as `Authorization: Bearer <access_token>`."""

    access_token: str
    token_type: str = "bearer"
'''

SECURITY = '''"""Password hashing (PBKDF2-HMAC-SHA256), bearer tokens and the guard of the entity routes."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from app.auth.models import AuthToken, AuthUser

ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000


def hash_iterations() -> int:
    """PBKDF2 iterations for new hashes: `PASSWORD_HASH_ITERATIONS`, or 600,000."""
    return int(os.environ.get("PASSWORD_HASH_ITERATIONS", DEFAULT_ITERATIONS))


def hash_password(password: str) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<hash>` for `password`, with a fresh random salt."""
    salt = secrets.token_bytes(16)
    iterations = hash_iterations()
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{ALGORITHM}${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches the stored hash (compared in constant time)."""
    try:
        algorithm, iterations, salt, expected = stored.split("$")
        digest = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), bytes.fromhex(salt), int(iterations)
        )
    except ValueError:
        return False
    return algorithm == ALGORITHM and hmac.compare_digest(digest.hex(), expected)


def new_token() -> str:
    """A new random bearer token."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """The SHA-256 digest under which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(connection: ASGIConnection) -> str | None:  # type: ignore[type-arg]
    """The bearer token of a request, or None."""
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def current_user(connection: ASGIConnection) -> AuthUser | None:  # type: ignore[type-arg]
    """The user whose token the request carries, or None."""
    token = bearer_token(connection)
    if token is None:
        return None
    async with connection.app.state.sessions() as session:
        row = await session.get(AuthToken, token_digest(token))
        return None if row is None else await session.get(AuthUser, row.user_id)


async def requires_user(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """A guard: 401 unless the request carries the bearer token of a user."""
    if await current_user(connection) is None:
        raise NotAuthorizedException("a valid bearer token is required (POST /auth/token)")


ROUTE_GUARDS: list[Guard] = [requires_user]
'''

ROUTES = '''"""Register, get a token, see who you are, sign out."""

from __future__ import annotations

import asyncio

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.params import JSONBody
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import AuthToken, AuthUser
from app.auth.schemas import AuthCredentials, AuthTokenRead, AuthUserRead
from app.auth.security import (
    bearer_token,
    current_user,
    hash_password,
    new_token,
    requires_user,
    token_digest,
    verify_password,
)


class AuthController(Controller):
    """The routes under `/auth`."""

    path = "/auth"
    tags = ["Authentication"]

    @post("/register")
    async def register(
        self, data: JSONBody[AuthCredentials], session: NamedDependency[AsyncSession]
    ) -> AuthUserRead:
        """Create a user; 409 when the username is taken."""
        taken = await session.scalar(select(AuthUser).where(AuthUser.username == data.username))
        if taken is not None:
            raise HTTPException(status_code=409, detail="this username is taken")
        password_hash = await asyncio.to_thread(hash_password, data.password)
        user = AuthUser(username=data.username, password_hash=password_hash)
        session.add(user)
        await session.commit()
        return AuthUserRead(id=user.id, username=user.username)

    @post("/token", status_code=200)
    async def token(
        self, data: JSONBody[AuthCredentials], session: NamedDependency[AsyncSession]
    ) -> AuthTokenRead:
        """A new bearer token for a username and password; 401 when they do not match."""
        user = await session.scalar(select(AuthUser).where(AuthUser.username == data.username))
        matches = user is not None and await asyncio.to_thread(
            verify_password, data.password, user.password_hash
        )
        if user is None or not matches:
            raise NotAuthorizedException("wrong username or password")
        token = new_token()
        session.add(AuthToken(digest=token_digest(token), user_id=user.id))
        await session.commit()
        return AuthTokenRead(access_token=token)

    @get("/me", guards=[requires_user])
    async def me(self, request: Request) -> AuthUserRead:  # type: ignore[type-arg]
        """The user the token belongs to."""
        user = await current_user(request)
        if user is None:
            raise NotAuthorizedException("a valid bearer token is required")
        return AuthUserRead(id=user.id, username=user.username)

    @post("/logout", status_code=204, guards=[requires_user])
    async def logout(self, request: Request, session: NamedDependency[AsyncSession]) -> None:  # type: ignore[type-arg]
        """Revoke the token of this request."""
        token = bearer_token(request) or ""
        await session.execute(delete(AuthToken).where(AuthToken.digest == token_digest(token)))
        await session.commit()
'''


def tests_module(project: ProjectLayout) -> str:
    """`tests/auth/test_auth.py`: registering, tokens, and the guard on every entity route."""
    first = project.entities[0]
    return f'''"""Authentication: register, sign in, and the guard on every entity route."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient

from app.auth.security import hash_password, verify_password

USER = {{"username": "alice", "password": "a long secret"}}


def sign_in(client: TestClient[Any]) -> str:
    """Register USER and get a token for it."""
    assert client.post("/auth/register", json=USER).status_code == 201
    response = client.post("/auth/token", json=USER)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def test_register_sign_in_and_see_who_you_are(anonymous: TestClient[Any]) -> None:
    token = sign_in(anonymous)
    me = anonymous.get("/auth/me", headers={{"Authorization": f"Bearer {{token}}"}})
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "alice"


def test_a_wrong_password_gets_no_token(anonymous: TestClient[Any]) -> None:
    sign_in(anonymous)
    wrong = {{**USER, "password": "not the password"}}
    assert anonymous.post("/auth/token", json=wrong).status_code == 401


def test_a_username_is_registered_once(anonymous: TestClient[Any]) -> None:
    sign_in(anonymous)
    assert anonymous.post("/auth/register", json=USER).status_code == 409


def test_every_entity_route_needs_a_token(anonymous: TestClient[Any]) -> None:
    assert anonymous.post({py(first.path)}, json={{}}).status_code == 401
    assert anonymous.patch({py(first.path + "/1")}, json={{}}).status_code == 401
    assert anonymous.delete({py(first.path + "/1")}).status_code == 401
    assert anonymous.get({py(first.path)}).status_code == 401
    assert anonymous.get({py(first.path + "/1")}).status_code == 401


def test_a_bad_token_is_refused(anonymous: TestClient[Any]) -> None:
    headers = {{"Authorization": "Bearer not-a-token"}}
    assert anonymous.get("/auth/me", headers=headers).status_code == 401
    assert anonymous.post({py(first.path)}, json={{}}, headers=headers).status_code == 401


def test_logout_revokes_the_token(anonymous: TestClient[Any]) -> None:
    headers = {{"Authorization": f"Bearer {{sign_in(anonymous)}}"}}
    assert anonymous.post("/auth/logout", headers=headers).status_code == 204
    assert anonymous.get("/auth/me", headers=headers).status_code == 401


def test_passwords_are_stored_as_salted_pbkdf2_hashes() -> None:
    first, second = hash_password("a long secret"), hash_password("a long secret")
    assert first.startswith("pbkdf2_sha256$") and first != second
    assert verify_password("a long secret", first)
    assert not verify_password("another secret", first)
    assert not verify_password("a long secret", "not a hash")
'''


def routes_module(project: ProjectLayout) -> str:
    """`app/auth/routes.py`, its session parameter named as the app provides it."""
    return re.sub(r"\bsession\b", project.session, ROUTES)


def auth_files(project: ProjectLayout) -> dict[str, tuple[str, str]]:
    """The files of the authentication feature: path → (phase, content)."""
    return {
        "app/auth/__init__.py": ("models", PACKAGE),
        "app/auth/models.py": ("models", MODELS),
        "app/auth/schemas.py": ("schemas", SCHEMAS),
        "app/auth/security.py": ("api", SECURITY),
        "app/auth/routes.py": ("api", routes_module(project)),
    }
