"""Explanations: class activation maps over pytorch-grad-cam."""
