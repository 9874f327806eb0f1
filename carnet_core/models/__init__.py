"""Models: the registry, weights, checkpoints, the run-folder contract, labels and the Classifier."""
