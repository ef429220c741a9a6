"""Drop the index of `generation_files.sha256`: nothing reads by it, and it cost every write.

No query looks a file row up by its blob (they go from a version's rows to the blobs by
the blobs' key), and no blob is ever deleted, the one thing SQLite's advice to index a
foreign key's child column is for. Each file row still inserted into it, at a random place
(sha256 order): 40 % of a 1,000-row insert into `generation_files` in a copy of B6's read
model, the table's most written (bench/RESULTS.md, 2026-12-05).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Drop `ix_generation_files_sha256`."""
    op.drop_index("ix_generation_files_sha256", table_name="generation_files")


def downgrade() -> None:
    """Create `ix_generation_files_sha256` again."""
    op.create_index("ix_generation_files_sha256", "generation_files", ["sha256"])
