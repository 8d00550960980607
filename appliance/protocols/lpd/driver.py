"""The LPD device driver: how release prints on a device whose configuration says `lpd`.

The device's `uri` is `lpd://host[:port]/queue` (port 515 when left out).
`submit` sends one receive-job: a control file with the job's owner as P,
its name as J and N, and the document as one data file printed with 'l'
(binary: the device takes the bytes as they are), named by as many 'l' lines
as the job has copies (RFC 1179's way of saying copies). RFC 1179 has no
words for sides, number-up, media or colour: the device prints with its
defaults, which is what an LPD-only device does for every sender.

**LPD has no job status.** There is no job id the device would answer
questions about (queue state is free text, and a job leaves it once
printed). So `status` reports `completed` once the transfer was acknowledged
(which is when `submit` returns its handle), with `impressions` None: the
release then charges the pages the site counted. Whether those pages really
came out is for the device's page counters to say (the SNMP watch compares
them around each release and records any difference).
"""

from __future__ import annotations

from pathlib import Path

from appliance.core.model import Device, Job
from appliance.core.release import DeviceJobStatus, DeviceUnavailable

from .client import LpdClient, LpdError
from .parser import parse_lpd_uri

COMPLETED_MESSAGE = "sent over LPD (no job status; the device acknowledged the transfer)"


class LpdDriver:
    def __init__(self, client: LpdClient) -> None:
        self.client = client

    async def submit(self, device: Device, job: Job, document: Path) -> str:
        """Send the job; returns `<device uri>#<LPD job number>` once it is acknowledged."""
        try:
            host, port, queue = parse_lpd_uri(device.uri)
        except ValueError as exc:
            raise DeviceUnavailable(f"{device.name}: {exc}") from exc
        try:
            number = await self.client.print_file(
                host, port, queue, document, user=job.owner,
                job_name=job.name or f"job-{job.id}", copies=job.options.copies, format="l",
            )
        except LpdError as exc:
            raise DeviceUnavailable(f"{device.name}: {exc}") from exc
        return f"{device.uri}#{number}"

    async def status(self, device: Device, handle: str) -> DeviceJobStatus:
        """'completed' (impressions unknown): a handle exists only for an acknowledged job."""
        return DeviceJobStatus("completed", None, COMPLETED_MESSAGE)

    async def find(self, device: Device, job: Job, within: float,
                   claimed: set[str]) -> str | None:
        """LPD cannot list a device's past jobs by name and owner: never found. A job
        whose handle was not recorded before a crash goes back to the queue (a release
        may then print it again; docs/wire/device-api.md says so)."""
        return None
