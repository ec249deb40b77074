"""Business logic with no Discord in it: tracking, seasons, ranking, boards, names, settings."""
