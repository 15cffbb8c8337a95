"""Verification: decoded values of two stores compared, streamed in a memory budget."""
