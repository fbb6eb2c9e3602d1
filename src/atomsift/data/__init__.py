"""Datasets: the canonical store, readers, splits, sampling, graphs and the mini-universe."""
