"""SIGINT and SIGTERM as requests to stop cleanly.

SLURM and Kubernetes send SIGTERM before they kill a job; a user at a terminal sends SIGINT. Both
end a run the same way: while training, the signal only sets a flag, and the loop stops at the
next step boundary (never halfway through an optimizer step), saves a checkpoint and exits with
128 + the signal number (130, 143). Before training starts there is nothing to save, and the
signal stops the run at once. A second signal while the checkpoint is being written is reported
and otherwise ignored, so it cannot corrupt the save.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Stopper:
    """Installs the handlers; `deferred` = True while training (flag only), False before (raise)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> Stopper:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            print(f"\n{signal.Signals(signum).name} again: already stopping, the checkpoint is being written; "
                  "please wait", file=sys.stderr, flush=True)
            return
        self.signum = signum
        if not self.deferred:
            raise Interrupted(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def raise_if_requested(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)
