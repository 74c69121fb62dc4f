"""Interlace billing."""
