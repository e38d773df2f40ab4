"""SIGTERM (a preempted VM, a scheduler's stop) as a flag the train loop checks, so the state is
saved before the process exits."""

from __future__ import annotations

import signal
import threading


class Preemption:
  """Turns SIGTERM into `requested`; `restore()` puts the previous handler back."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
