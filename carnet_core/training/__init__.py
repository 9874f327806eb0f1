"""Training: the fine-tuning loop (Lightning Fabric), its loggers and the background job runner."""
