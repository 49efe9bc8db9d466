"""Not assessable readings: the reason and warning of a prediction; probability and label may be
empty (a film the model refused to judge, see fracdet.inference.assess).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:  # SQLite rebuilds the table
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("warning", sa.Text(), nullable=True))
        batch.alter_column("probability", existing_type=sa.Float(), nullable=True)
        batch.alter_column("label", existing_type=sa.String(32), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM predictions WHERE probability IS NULL")
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column("label", existing_type=sa.String(32), nullable=False)
        batch.alter_column("probability", existing_type=sa.Float(), nullable=False)
        batch.drop_column("warning")
        batch.drop_column("reason")
