"""The IPP device driver: how release prints on an MFD that speaks IPP."""

from __future__ import annotations

from pathlib import Path

from appliance.core.model import Device, Job
from appliance.core.release import DeviceJobStatus, DeviceUnavailable

from . import codec
from .client import IppClient, IppClientError
from .constants import GroupTag, JobState, Operation, Status, ValueTag

_STATES: dict[int, str] = {
    JobState.PENDING: "pending",
    JobState.PENDING_HELD: "pending",
    JobState.PROCESSING: "processing",
    JobState.PROCESSING_STOPPED: "processing",
    JobState.COMPLETED: "completed",
    JobState.ABORTED: "aborted",
    JobState.CANCELED: "canceled",
}


class IppDriver:
    def __init__(self, client: IppClient) -> None:
        self.client = client

    async def submit(self, device: Device, job: Job, document: Path) -> str:
        """Print-Job with the job's options; returns `<job-uri>` or `<printer-uri>#<job-id>`."""
        options = job.options
        extra = [
            codec.attr("job-name", ValueTag.NAME, job.name or f"job-{job.id}"),
            codec.attr("document-format", ValueTag.MIME_MEDIA_TYPE, job.document_format),
        ]
        message = codec.request(Operation.PRINT_JOB, self.client.next_request_id(), device.uri,
                                user=job.owner, extra=extra)
        template = message.ensure_group(GroupTag.JOB)
        template.add(codec.attr("copies", ValueTag.INTEGER, options.copies))
        template.add(codec.attr("sides", ValueTag.KEYWORD, options.sides))
        if options.number_up != 1:
            template.add(codec.attr("number-up", ValueTag.INTEGER, options.number_up))
        template.add(codec.attr("print-color-mode", ValueTag.KEYWORD,
                                "color" if job.colour else "monochrome"))
        if options.media:
            template.add(codec.attr("media", ValueTag.KEYWORD, options.media))
        try:
            answer = await self.client.send(device.uri, message, document)
        except IppClientError as exc:
            raise DeviceUnavailable(str(exc)) from exc
        if answer.code >= 0x0400:
            reason = answer.get(GroupTag.OPERATION, "status-message") or _status_name(answer.code)
            raise DeviceUnavailable(f"{device.name} refused the job: {reason}")
        job_id = answer.get(GroupTag.JOB, "job-id")
        if not isinstance(job_id, int):
            raise DeviceUnavailable(f"{device.name} answered Print-Job without a job-id")
        return f"{device.uri}#{job_id}"

    async def status(self, device: Device, handle: str) -> DeviceJobStatus:
        printer_uri, _, job_id = handle.rpartition("#")
        message = codec.request(
            Operation.GET_JOB_ATTRIBUTES, self.client.next_request_id(), printer_uri,
            user="outpost",
            extra=[
                codec.attr("job-id", ValueTag.INTEGER, int(job_id)),
                codec.attr("requested-attributes", ValueTag.KEYWORD, "job-state",
                           "job-state-reasons", "job-state-message",
                           "job-impressions-completed"),
            ],
        )
        try:
            answer = await self.client.send(printer_uri, message)
        except IppClientError as exc:
            raise DeviceUnavailable(str(exc)) from exc
        if answer.code == Status.CLIENT_ERROR_NOT_FOUND:
            # The device forgot the job (it restarted): we cannot know what printed.
            return DeviceJobStatus("aborted", None, "the device no longer knows the job")
        if answer.code >= 0x0400:
            raise DeviceUnavailable(f"Get-Job-Attributes: {_status_name(answer.code)}")
        state = answer.get(GroupTag.JOB, "job-state")
        reasons = answer.group(GroupTag.JOB)
        reason_values = []
        if reasons is not None and reasons.get("job-state-reasons") is not None:
            reason_values = [str(v) for v in reasons.attributes["job-state-reasons"].values]
        text = answer.get(GroupTag.JOB, "job-state-message") or ", ".join(
            r for r in reason_values if r != "none"
        )
        impressions = answer.get(GroupTag.JOB, "job-impressions-completed")
        return DeviceJobStatus(
            _STATES.get(state, "processing") if isinstance(state, int) else "processing",
            impressions if isinstance(impressions, int) else None,
            str(text),
        )


    async def find(self, device: Device, job: Job, within: float,
                   claimed: set[str]) -> str | None:
        """Get-Jobs (which-jobs=all, my-jobs): the newest job of the owner with the job's
        name that the device created at most `within` seconds ago, by its own clock
        (`job-printer-up-time` minus `time-at-creation`: no clock skew between site and
        device), and whose handle is not in `claimed`."""
        message = codec.request(
            Operation.GET_JOBS, self.client.next_request_id(), device.uri, user=job.owner,
            extra=[
                codec.attr("which-jobs", ValueTag.KEYWORD, "all"),
                codec.attr("my-jobs", ValueTag.BOOLEAN, True),
                codec.attr("requested-attributes", ValueTag.KEYWORD, "job-id", "job-name",
                           "job-originating-user-name", "time-at-creation",
                           "job-printer-up-time"),
            ],
        )
        try:
            answer = await self.client.send(device.uri, message)
        except IppClientError as exc:
            raise DeviceUnavailable(str(exc)) from exc
        if answer.code >= 0x0400:
            raise DeviceUnavailable(f"Get-Jobs: {_status_name(answer.code)}")
        name = job.name or f"job-{job.id}"
        best: tuple[int, str] | None = None
        for group in answer.groups_of(GroupTag.JOB):
            values = {n: a.value for n, a in group.attributes.items()}
            job_id, created = values.get("job-id"), values.get("time-at-creation")
            up = values.get("job-printer-up-time")
            if not (isinstance(job_id, int) and isinstance(created, int)
                    and isinstance(up, int)):
                continue
            handle = f"{device.uri}#{job_id}"
            if values.get("job-name") != name or handle in claimed \
                    or values.get("job-originating-user-name") not in (None, job.owner) \
                    or up - created > within:
                continue
            if best is None or job_id > best[0]:
                best = (job_id, handle)
        return best[1] if best else None


def _status_name(code: int) -> str:
    try:
        return Status(code).name.lower().replace("_", "-")
    except ValueError:
        return f"0x{code:04x}"
