"""Reading and writing: image files, the FIRE layout, errors and atomic outputs (the lowest floor)."""
