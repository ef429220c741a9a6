"""A generation's verification: the sandboxed run of its own tests, lint and compile check.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add `generations.verification` (JSON; null until a verification starts)."""
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("verification", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop `generations.verification`."""
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("verification")
