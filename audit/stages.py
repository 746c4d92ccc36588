"""Named points of a run where a test can stop it the hard way, as a kill or a Ctrl-C would.

Inert unless the environment sets DIFFAUDIT_KILL_AT=STAGE or STAGE:K (stop the K-th time the
run reaches STAGE); the process then sends itself SIGKILL, or SIGINT (a Ctrl-C: KeyboardInterrupt)
when DIFFAUDIT_KILL_SIGNAL=INT. tests/harness/test_kill_stages.py kills runs at each of these
and checks that the re-run finishes with the same results.

Stages: probes (after one attribute's probe is saved), calibration-trial (after a calibration
trial is kept on disk), labels (after a cell's labels are written), fid (after the reference
statistics are ready, before the cell's FID), report (after the cell pages are rendered).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_REACHED: Counter = Counter()


def reached(stage: str) -> None:
    wanted = os.environ.get("DIFFAUDIT_KILL_AT")
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != stage:
        return
    _REACHED[stage] += 1
    if _REACHED[stage] == int(count or 1):
        interrupt = os.environ.get("DIFFAUDIT_KILL_SIGNAL", "").upper() == "INT"
        os.kill(os.getpid(), signal.SIGINT if interrupt else signal.SIGKILL)
