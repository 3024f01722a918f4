"""The training side: steps 1-4 of the paper."""
