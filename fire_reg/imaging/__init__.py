"""Image processing every stage shares: vessel maps, similarity measures, overlay pictures."""
