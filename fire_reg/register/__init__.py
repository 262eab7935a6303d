"""The registration path: vessel maps of a pair, ECC, the fine stage, trust, the Registrar and its
result type."""
