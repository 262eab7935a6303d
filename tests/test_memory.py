"""The allocator tuning (fire_reg.io.memory): freed blocks are reused instead of page-faulted
in again, and the command line turns it on."""
import subprocess
import sys

import pytest

from fire_reg.cli import commands
from fire_reg.io import memory

# arrays of 1.6-32 MB made and freed in a changing order, as a run of pairs does; prints the
# minor page faults of the loop
CHURN = """
import resource, sys
import numpy as np
from fire_reg.io.memory import keep_freed_memory
tuned = sys.argv[1] == "tuned" and keep_freed_memory()
rng = np.random.default_rng(0)
def churn(rounds):
    for _ in range(rounds):
        sizes = rng.integers(200_000, 4_000_000, 4)
        arrays = [np.ones(size) for size in sizes]
        del arrays[1], arrays[2]
        more = np.ones(int(sizes[0]))
        del arrays, more
churn(3)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(40)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(mode: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                          check=True)
    tuned, faults = done.stdout.split()
    return tuned, int(faults)


@pytest.mark.skipif(not memory.keep_freed_memory(), reason="no glibc mallopt on this system")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    (plain_tuned, plain), (tuned, kept) = _faults("plain"), _faults("tuned")
    assert plain_tuned == "False" and tuned == "True"
    assert kept < plain / 3, (kept, plain)


def test_every_command_turns_it_on(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(commands, "keep_freed_memory", lambda: calls.append(True))
    assert commands.main(["--version"]) == 0
    assert calls == [True]
