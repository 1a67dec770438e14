"""Seed the platform template ``code-runner-beta`` (Jupyter Server + the ``wrenn`` kernel)

The row makes the template visible from the start; its rootfs is produced by building the recipe through
the build API (``wrenn-cp template build templates/code-runner/recipe.json --overwrite``), which replaces
this row with the built template. The id is fixed: uuid5(NAMESPACE_URL, "wrenn:template:code-runner-beta").

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CODE_RUNNER_ID = "1178a1d6-8982-5b5c-aab5-0605e40b0617"


def upgrade() -> None:
    op.execute(
        "INSERT INTO templates (id, name, type, vcpus, memory_mb, size_bytes, team_id, default_user) VALUES "
        f"('{CODE_RUNNER_ID}', 'code-runner-beta', 'base', 1, 512, 0, "
        "'00000000-0000-0000-0000-000000000000', 'wrenn-user') ON CONFLICT DO NOTHING"
    )


def downgrade() -> None:
    op.execute(f"DELETE FROM templates WHERE id = '{CODE_RUNNER_ID}'")
