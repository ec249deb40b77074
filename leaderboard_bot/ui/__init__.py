"""Embed builders and text formatting: pure functions of their inputs."""
