"""Data sets in the FIRE layout: the reader of FIRE itself (control points, ground-truth fits) and the
embedded sets generated from real photographs (exact ground truth)."""
