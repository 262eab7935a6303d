"""Data sets: the embedded FIRE-layout sets generated from real photographs (exact ground truth)."""
