"""The record of readings: predictions served and readers' feedback.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=True),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("input_sha256", sa.String(64), nullable=True),
        sa.Column("frame", sa.Integer(), nullable=True),
        sa.Column("study_uid", sa.String(64), nullable=True),
        sa.Column("series_uid", sa.String(64), nullable=True),
        sa.Column("sop_uid", sa.String(64), nullable=True),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("body_part", sa.String(64), nullable=True),
        sa.Column("view", sa.String(64), nullable=True),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("label", sa.String(32), nullable=False),
        sa.Column("verdict", sa.String(32), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("doubt_threshold", sa.Float(), nullable=True),
        sa.Column("fracture_threshold", sa.Float(), nullable=True),
    )
    op.create_index("ix_predictions_input_sha256", "predictions", ["input_sha256"])
    op.create_index("ix_predictions_study_uid", "predictions", ["study_uid"])
    op.create_index("ix_predictions_model_sha256", "predictions", ["model_sha256"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("prediction_id", sa.Integer(), sa.ForeignKey("predictions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reader_label", sa.String(32), nullable=False),
        sa.Column("reader_fractured", sa.Boolean(), nullable=False),
        sa.Column("reader", sa.String(128), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
    )
    op.create_index("ix_feedback_prediction_id", "feedback", ["prediction_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_prediction_id", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_predictions_model_sha256", table_name="predictions")
    op.drop_index("ix_predictions_study_uid", table_name="predictions")
    op.drop_index("ix_predictions_input_sha256", table_name="predictions")
    op.drop_table("predictions")
