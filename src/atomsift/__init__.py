"""atomsift: data-efficient pretraining for atomic property prediction.

Implements Ghunaim et al. 2025 (arXiv 2502.11085): the Chemical Similarity Index (CSI) to pick an
upstream dataset, budgeted GemNet-OC pretraining, finetuning, and one Snakemake DAG for the paper's
tables and figures.
"""

__version__ = "0.1.0"
