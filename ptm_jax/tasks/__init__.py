"""Downstream tasks: fine-tuning (and probes) of a pretrained run on labelled data."""
from ptm_jax.tasks.finetune import run_downstream

__all__ = ['run_downstream']
