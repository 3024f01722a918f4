"""What every side shares."""
