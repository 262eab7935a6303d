"""The evaluation path: the FIRE metric, classic baselines, the Tester and its plots."""
