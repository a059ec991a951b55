"""A clean stop on Ctrl-C or SIGTERM: the training loops check ``StopRequested`` at every micro-batch
and save a checkpoint before they exit."""

from __future__ import annotations

import signal


class StopRequested:
    """SIGINT / SIGTERM ask for a clean stop: checkpoint, then exit. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint and stopping (Ctrl-C again to abort)", flush=True)

    def install(self) -> "StopRequested":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
