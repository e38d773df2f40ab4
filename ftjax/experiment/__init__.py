"""The comparison experiment: base / prompted / RAG / fine-tuned / fine-tuned+RAG / RAFT / CAG
arms on the same held-out questions, scored, costed and reported.

  python -m ftjax.experiment --config configs/experiments/support.py --workdir runs/support
  ftjax.experiment.run(config, workdir) -> summary dict (also WORKDIR/summary.json)
"""

from ftjax.experiment.config import ARMS, experiment_config, validate
from ftjax.experiment.runner import run

__all__ = ["ARMS", "experiment_config", "run", "validate"]
