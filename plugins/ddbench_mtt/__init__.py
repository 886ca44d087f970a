"""Trajectory matching distiller: MTT (to be implemented)."""
