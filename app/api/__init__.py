"""Interlace api."""
