"""Interlace services."""
