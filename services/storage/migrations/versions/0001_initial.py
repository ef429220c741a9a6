"""The read model: projects, generations, blobs, files, the audit index, positions.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "projects",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
    )
    op.create_index("ix_projects_owner", "projects", ["owner"])

    op.create_table(
        "generations",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent_generation_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("locked_paths", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_phase", sa.String(255), nullable=True),
        sa.Column("error_kind", sa.String(255), nullable=True),
        sa.Column("retryable", sa.Boolean(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("tokens_in", sa.BigInteger(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), nullable=False),
        sa.Column("llm_calls", sa.Integer(), nullable=False),
        sa.Column("phase_durations", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("last_stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_generations"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_generations_project_id_projects"
        ),
        sa.UniqueConstraint("project_id", "version", name="uq_generations_version"),
    )
    op.create_index("ix_generations_owner", "generations", ["owner"])

    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_blobs"),
    )

    op.create_table(
        "generation_files",
        sa.Column("generation_id", sa.String(64), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("phase", sa.String(255), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("generation_id", "path", name="pk_generation_files"),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name="fk_generation_files_generation_id_generations",
        ),
        sa.ForeignKeyConstraint(
            ["sha256"], ["blobs.sha256"], name="fk_generation_files_sha256_blobs"
        ),
    )
    op.create_index("ix_generation_files_sha256", "generation_files", ["sha256"])

    op.create_table(
        "events",
        sa.Column("stream_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("generation_id", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("stream_seq", name="pk_events"),
    )
    op.create_index("ix_events_generation_id", "events", ["generation_id"])

    op.create_table(
        "projection_positions",
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", name="pk_projection_positions"),
    )


def downgrade() -> None:
    """Drop every table."""
    op.drop_table("projection_positions")
    op.drop_index("ix_events_generation_id", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_generation_files_sha256", table_name="generation_files")
    op.drop_table("generation_files")
    op.drop_table("blobs")
    op.drop_index("ix_generations_owner", table_name="generations")
    op.drop_table("generations")
    op.drop_index("ix_projects_owner", table_name="projects")
    op.drop_table("projects")
