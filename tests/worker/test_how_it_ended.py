"""The supervisor's account of how a trainer ended (issue 23, item 19): never a checkpoint it did not save, nor
a denial of the one it did."""

from __future__ import annotations

import pytest

from worker.supervisor import how_it_ended


@pytest.mark.parametrize(
    ("exit_code", "finished", "said"),
    [
        (0, True, "the trainer finished every step"),
        (75, False, "the trainer saved a checkpoint and stopped"),
        (-9, False, "the trainer was killed by signal 9 without saving"),
        (-15, True, "the trainer had finished every step and saved its last checkpoint (then exit code -15)"),
        (-9, True, "the trainer had finished every step and saved its last checkpoint (then exit code -9)"),
        (74, False, "the trainer's lease ran out: it stopped without saving"),
        (1, False, "the trainer exited with code 1"),
    ],
)
def test_how_it_ended_says_what_the_exit_code_and_the_run_directory_say(
    exit_code: int | None, finished: bool, said: str
) -> None:
    assert how_it_ended(exit_code, finished=finished) == said
