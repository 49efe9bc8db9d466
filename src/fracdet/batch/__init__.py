"""Archive-scale prediction on Ray Data: ``fracdet predict --engine ray`` (needs ``fracdet[ray]``).

A face beside the CLI: it runs the same :class:`~fracdet.inference.Predictor` path as the local
engine, one model per Ray actor. :mod:`.sources` lists inputs and reads their bytes,
:mod:`.engine` predicts them, :mod:`.output` writes Parquet shards, the CSV and the studies.
"""

from fracdet.batch.engine import run_ray_predict

__all__ = ["run_ray_predict"]
