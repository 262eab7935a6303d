"""``python -m fire_reg.cli``."""
import sys

from fire_reg.cli.commands import console_main

sys.exit(console_main())
