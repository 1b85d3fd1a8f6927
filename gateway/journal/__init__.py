"""The replay journal: append-only, chained JSON Lines segments with group commit."""
