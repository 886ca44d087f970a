"""Gradient and distribution matching distillers: DC, DSA and DM (to be implemented)."""
