"""Two-stage DELF training: tuning (backbone + classifier), then attention."""
