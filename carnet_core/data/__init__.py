"""Data: images, dataset readers, the dataset check, uploads. Imports nothing of CarNet above errors and config."""
