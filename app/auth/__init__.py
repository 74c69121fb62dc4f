"""Interlace auth."""
