"""Budgeted pretraining and finetuning (Lightning)."""
