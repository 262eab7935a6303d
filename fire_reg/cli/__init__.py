"""The ``fire-reg`` command line (:mod:`.commands`; batches in :mod:`.batch`, the demo in :mod:`.demo`)."""
from fire_reg.cli.commands import console_main, main

__all__ = ["console_main", "main"]
