"""Tools: cut students out of checkpoints; tiny models for tests, quickstart and bench."""
