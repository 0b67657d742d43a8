"""history: inspections, blobs, batches

Revision ID: 0001
Revises: (none: the first schema)
Create Date: 2026-11-29 20:32:59.485368
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('batches',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('product', sa.String(length=64), nullable=False),
    sa.Column('policy', sa.String(length=64), nullable=False),
    sa.Column('folder', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('anomalous', sa.Integer(), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batches_status'), ['status'], unique=False)

    op.create_table('blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('media_type', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_table('inspections',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('product', sa.String(length=64), nullable=False),
    sa.Column('product_version', sa.String(length=32), nullable=False),
    sa.Column('policy', sa.String(length=64), nullable=False),
    sa.Column('filename', sa.Text(), nullable=False),
    sa.Column('anomaly_present', sa.Boolean(), nullable=True),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('defect_type', sa.String(length=128), nullable=True),
    sa.Column('stop_reason', sa.String(length=16), nullable=True),
    sa.Column('elapsed_ms', sa.Float(), nullable=False),
    sa.Column('image_sha', sa.String(length=64), nullable=False),
    sa.Column('heatmap_sha', sa.String(length=64), nullable=False),
    sa.Column('overlay_sha', sa.String(length=64), nullable=False),
    sa.Column('thumb_sha', sa.String(length=64), nullable=False),
    sa.Column('report_sha', sa.String(length=64), nullable=False),
    sa.Column('result', sa.Text(), nullable=False),
    sa.Column('batch_id', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ),
    sa.ForeignKeyConstraint(['heatmap_sha'], ['blobs.sha256'], ),
    sa.ForeignKeyConstraint(['image_sha'], ['blobs.sha256'], ),
    sa.ForeignKeyConstraint(['overlay_sha'], ['blobs.sha256'], ),
    sa.ForeignKeyConstraint(['report_sha'], ['blobs.sha256'], ),
    sa.ForeignKeyConstraint(['thumb_sha'], ['blobs.sha256'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('inspections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inspections_anomaly_present'), ['anomaly_present'], unique=False)
        batch_op.create_index(batch_op.f('ix_inspections_batch_id'), ['batch_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inspections_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_inspections_product_created', ['product', 'created_at'], unique=False)

    op.create_table('batch_items',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('batch_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('inspection_id', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ),
    sa.ForeignKeyConstraint(['inspection_id'], ['inspections.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('batch_id', 'position', name='uq_batch_items_position')
    )
    with op.batch_alter_table('batch_items', schema=None) as batch_op:
        batch_op.create_index('ix_batch_items_batch_status', ['batch_id', 'status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('batch_items', schema=None) as batch_op:
        batch_op.drop_index('ix_batch_items_batch_status')

    op.drop_table('batch_items')
    with op.batch_alter_table('inspections', schema=None) as batch_op:
        batch_op.drop_index('ix_inspections_product_created')
        batch_op.drop_index(batch_op.f('ix_inspections_created_at'))
        batch_op.drop_index(batch_op.f('ix_inspections_batch_id'))
        batch_op.drop_index(batch_op.f('ix_inspections_anomaly_present'))

    op.drop_table('inspections')
    op.drop_table('blobs')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batches_status'))

    op.drop_table('batches')
