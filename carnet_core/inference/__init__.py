"""Inference: top-k prediction, ensembles and the engines (torch, ONNX Runtime, reduced precision)."""
