"""The two-layer multi-index distillation algorithm (to be implemented)."""
