"""The site's nouns, as the logic sees them: no SQL types, no wire formats."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class JobState(StrEnum):
    """Lifecycle of a job at the site (mapped to IPP job-state by the IPP server)."""

    HELD = "held"              # waiting for its owner at an MFD (Find-Me) or for Release-Job
    PENDING = "pending"        # direct queue: about to be sent
    PROCESSING = "processing"  # being sent to / printed by a device
    COMPLETED = "completed"
    CANCELED = "canceled"
    ABORTED = "aborted"
    EXPIRED = "expired"


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.CANCELED, JobState.ABORTED,
                             JobState.EXPIRED})


@dataclass(frozen=True)
class User:
    id: int
    username: str
    full_name: str
    account_id: int
    disabled: bool


@dataclass(frozen=True)
class Device:
    name: str
    protocol: str   # 'ipp' (LPD comes with its issue)
    uri: str
    colour: bool
    duplex: bool
    cost_policy: str
    enabled: bool


@dataclass(frozen=True)
class JobOptions:
    copies: int = 1
    sides: str = "one-sided"
    number_up: int = 1
    media: str | None = None
    colour_mode: str | None = None   # IPP print-color-mode: 'monochrome', 'color', 'auto', ...
    hold_until: str | None = None    # IPP job-hold-until keyword


@dataclass(frozen=True)
class Job:
    id: int
    uuid: str
    queue: str
    owner: str
    user_id: int | None
    name: str
    document_format: str
    spool_name: str | None
    size: int
    pages: int | None
    colour: bool
    analysed: bool
    options: JobOptions
    state: JobState
    state_reasons: tuple[str, ...]
    state_message: str
    device: str | None
    remote_job_uri: str | None
    attempts: int
    impressions_completed: int
    charged: int
    created_at: float
    processing_at: float | None
    completed_at: float | None
    expires_at: float | None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Queue:
    """A print queue served over IPP: the Find-Me queue or a device's direct queue."""

    name: str
    kind: str                   # 'findme' or 'direct'
    device: str | None = None   # for direct queues
    info: str = ""


@dataclass
class LedgerResult:
    inserted: bool              # False: the entry id existed already (a replay)
    balance: int
    amount: int = 0
    body_matches: bool = True   # False: same id, different body (refused)
    extra: dict[str, object] = field(default_factory=dict)
