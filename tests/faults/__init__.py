"""The fault suite: kills, restarts, freezes, hangs, poison and bad input against real gearmand."""
