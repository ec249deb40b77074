"""Disnake extensions, one per feature: thin translations of Discord events and calls into services."""
