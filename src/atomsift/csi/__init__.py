"""Chemical Similarity Index: feature moments, Frechet distance, dataset selection."""
