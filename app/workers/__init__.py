"""Interlace workers."""
