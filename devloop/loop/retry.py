"""Retrying a temporary failure: growing delays, and the failure said once, not every attempt.

Both the build lanes (the Docker engine away) and the deployer (the cluster away) retry until the
service is back; a user wants one line when it goes, silence while it stays away, and one line
when it is back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Outage:
    """The state of one retried thing: how many attempts failed in a row, and what was said."""

    delays: Sequence[float]  # seconds before attempt 2, 3, ...; the last one repeats
    attempts: int = 0
    said: str = ""  # the message of the failure being retried, once it was reported

    def failed(self, message: str) -> bool:
        """Count a failed attempt; True when `message` is news (report it), False when repeated."""
        self.attempts += 1
        news = message != self.said
        self.said = message
        return news

    def delay(self) -> float:
        return self.delays[min(self.attempts, len(self.delays)) - 1] if self.attempts else 0.0

    def ended(self) -> bool:
        """Count a success; True when it ends an outage (say that it is back)."""
        was_down = self.attempts > 0
        self.attempts, self.said = 0, ""
        return was_down
