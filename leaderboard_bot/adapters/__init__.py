"""Workarounds that lean on a library's private behaviour, each isolated and fail-safe."""
