"""An event-sourced ledger: the events are the truth, balances are a projection."""

from dataclasses import dataclass, field
import hashlib
import json


@dataclass(frozen=True)
class Event:
    """One change, never updated or deleted."""

    offset: int
    kind: str
    account: str
    amount: int

    @property
    def id(self) -> str:
        """A key from the event itself, never from the clock."""
        body = json.dumps([self.kind, self.account, self.amount, self.offset])
        return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class Ledger:
    """Appends events and keeps the balances projection up to date."""

    events: list = field(default_factory=list)
    balances: dict = field(default_factory=dict)
    applied: set = field(default_factory=set)

    def append(self, kind: str, account: str, amount: int) -> Event:
        if kind not in ("opened", "deposited", "withdrew"):
            raise ValueError(f"unknown event kind {kind!r}")
        if amount < 0:
            raise ValueError(f"amount must not be negative, got {amount}")
        event = Event(len(self.events), kind, account, amount)
        self.events.append(event)
        self.apply(event)
        return event

    def apply(self, event: Event) -> None:
        """Idempotent: applying an event twice is the same as applying it once."""
        if event.id in self.applied:
            return
        sign = -1 if event.kind == "withdrew" else 1
        self.balances[event.account] = self.balances.get(event.account, 0) + sign * event.amount
        self.applied.add(event.id)

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def replay(self) -> None:
        """Throw the projection away and rebuild it from the log."""
        self.balances.clear()
        self.applied.clear()
        for event in self.events:
            self.apply(event)
