"""The runner's report: one timestamped line per container state change or event,
printed as it happens and kept, so a test can ask what happened and when."""

import sys
import threading
import time
from dataclasses import dataclass


@dataclass
class Event:
    at: float  # time.monotonic()
    wall: float  # time.time()
    pod: str
    container: str
    reason: str
    message: str

    def line(self):
        stamp = time.strftime("%H:%M:%S", time.localtime(self.wall)) + f".{int(self.wall * 1000) % 1000:03d}"
        who = f"{self.pod}/{self.container}" if self.container else self.pod
        return f"{stamp} {who} {self.reason}" + (f": {self.message}" if self.message else "")


class EventLog:
    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.events = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def emit(self, pod, container, reason, message=""):
        event = Event(time.monotonic(), time.time(), pod, container or "", reason, message)
        with self.lock:
            self.events.append(event)
            self.changed.notify_all()
        if self.stream is not None:
            print(event.line(), file=self.stream, flush=True)
        return event

    def find(self, pod=None, container=None, reason=None):
        with self.lock:
            return [e for e in self.events if (pod is None or e.pod == pod)
                    and (container is None or e.container == container) and (reason is None or e.reason == reason)]

    def wait(self, timeout, pod=None, container=None, reason=None, after=0.0):
        """The first matching event at or after monotonic time `after`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for e in self.events:
                    if e.at >= after and (pod is None or e.pod == pod) and (container is None or e.container == container) \
                            and (reason is None or e.reason == reason):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)
