"""leaderboard-bot: counts each member's messages and voice time and shows who is most active."""

__version__ = "0.1.0"
