"""The one exception for bad user input.

``InputError`` is what the command line turns into a one-line message and exit status 2;
every stage raises it for bad input, naming the file and the problem.
"""
from __future__ import annotations

class InputError(Exception):
    """Bad user input: missing, corrupt or malformed file, wrong size, unreadable model."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # pickled whole, so that it crosses to and from worker processes
        return type(self), (self.path, self.problem)
