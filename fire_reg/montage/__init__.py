"""Montages: many fields of one eye placed in one frame (between register and evaluate)."""
