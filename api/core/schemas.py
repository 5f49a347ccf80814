"""What the REST API sends back (docs/contracts.md, "REST shapes"). A client sends a `vit.config.JobSpec`; it is
never the table row: the row (api/core/models.py) holds the resolved spec plus the service's own bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands timezone-aware columns back naive; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class JobOut(BaseModel):
    id: int
    name: str
    kind: str
    status: str
    attempt: int
    max_attempts: int
    step: int
    total_steps: int
    progress: float = Field(description="step / total_steps, 0..1")
    resumed_from_step: int | None
    wait_reason: str | None  # why a queued job has not started (its parent, no free worker, no worker at all)
    devices: list[int] = []  # the GPUs the running attempt holds on its worker (CUDA_VISIBLE_DEVICES)
    queue_position: int | None = None  # 1 = runs next; queued jobs that could run now, in the order they will
    cancel_requested: bool
    error: str | None
    worker: str | None
    nodes: list[str] = Field(
        [], description="The nodes of the running (or last) attempt: Slurm node names, or worker names."
    )
    executor_ref: str | None = Field(
        None, description='What launched the job outside vitq, e.g. "slurm:1234".'
    )
    parent_job_id: int | None
    sweep_id: int | None = Field(None, description="The sweep that made it (None: submitted alone).")
    owner: str = Field(description="Who submitted the job.")
    cancelled_by: str | None = Field(description="Who asked to cancel it (None: nobody).")
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    heartbeat_at: UtcDatetime | None
    spec: dict[str, Any] = Field(description="The resolved spec: every default filled in.")
    latest_metrics: dict[str, float] = Field(description="Each metric's value at its latest step.")
    best_val_top1: float | None
    images_per_s: float | None
    eta_seconds: float | None
    tags: list[str] = []  # the owner's labels (PATCH /jobs/{id})
    notes: str | None = None  # the owner's free text


class JobList(BaseModel):
    items: list[JobOut]
    total: int


class Series(BaseModel):
    steps: list[int]
    values: list[float]


class MetricsOut(BaseModel):
    series: dict[str, Series]
    cursor: int = Field(description="Id of the newest point considered: pass it back as `since`.")


class LogPageOut(BaseModel):
    start: int = Field(description="The first line's number (1-based).")
    lines: list[str] = Field(description="Each cut at 2,000 bytes, ending with how many more it has.")
    total_lines: int
    size_bytes: int


class LogMatchOut(BaseModel):
    line: int = Field(description="Its number, as GET /jobs/{id}/logs/lines numbers lines.")
    text: str = Field(description="The line, or 2,000 bytes around its first match, with … where cut.")
    cut: bool


class LogSearchOut(BaseModel):
    query: str
    match_case: bool
    matches: list[LogMatchOut]
    more: bool = Field(description="More lines match than `limit`.")


class CheckpointOut(BaseModel):
    name: str
    step: int
    size_bytes: int
    created_at: UtcDatetime
    url: str


class CheckpointList(BaseModel):
    items: list[CheckpointOut]


class Health(BaseModel):
    database: str
    broker: str
    workers: str  # "ok", "ok: none alive, no job waits" or "down: no live worker while N job(s) wait"
    live_workers: list[str]  # names (host:pid) of workers whose heartbeat is within the lease


class SweepSummary(BaseModel):
    id: int
    name: str
    created_at: UtcDatetime
    mode: str = Field(
        description='"grid" or "random" (every child made at once), or a search\'s method: "tpe", ...'
    )
    fields: list[str] = Field(description="The swept spec fields, dotted (e.g. optim.lr).")
    spec: dict[str, Any] = Field(description="The sweep as submitted: base, and grid, random or method.")
    job_count: int
    status_counts: dict[str, int] = Field(description="Children by status.")
    best_val_top1: float | None = Field(description="The best val_top1 of any child.")
    searching: bool = Field(False, description="A search: children are asked for as earlier ones end.")
    max_jobs: int | None = Field(None, description="A search's children in all.")
    parallel: int | None = Field(None, description="A search's children queued or running at once.")
    metric: str | None = Field(None, description="What a search optimizes (its children's last value).")
    goal: str | None = Field(None, description='"maximize" or "minimize" the metric.')
    ended: bool = Field(False, description="A search that will ask for no more children.")


class SweepChild(BaseModel):
    params: dict[str, Any] = Field(
        description="This child's value of each swept field (from its resolved spec)."
    )
    job: JobOut
    trial: int | None = Field(None, description="A search's child: the Optuna trial number it runs.")


class SweepOut(SweepSummary):
    jobs: list[SweepChild] = Field(description="The children, in the order they were made.")


class ParamImportance(BaseModel):
    field: str
    importance: float = Field(description="Its share of the metric's variance (fANOVA); all fields sum to 1.")


class SweepImportance(BaseModel):
    metric: str
    jobs: int = Field(description="Children with a value of the metric, the ones it was measured on.")
    method: str = Field(description="How it was measured.")
    items: list[ParamImportance] = Field(description="Most important first; empty below 3 children.")


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, max_length=2048, description="An http(s) URL (a Slack incoming webhook...)."
    )
    job_id: int | None = Field(None, ge=1, le=2**31 - 1, description="Only this job's end.")
    sweep_id: int | None = Field(None, ge=1, le=2**31 - 1, description="Only this sweep's end.")


class WebhookOut(BaseModel):
    id: int
    url: str
    job_id: int | None
    sweep_id: int | None
    owner: str
    created_at: UtcDatetime


class DeliveryOut(BaseModel):
    id: int
    event: str
    state: str = Field(description="pending, delivered or failed")
    attempts: int
    last_code: int | None
    last_error: str | None
    created_at: UtcDatetime
    delivered_at: UtcDatetime | None
    payload: dict[str, Any]


class SweepList(BaseModel):
    items: list[SweepSummary]
    total: int


class DeviceOut(BaseModel):
    index: int
    name: str
    memory_mb: int
    busy: bool  # a running job holds it
    job_id: int | None  # that job, when it is the caller's to see


class GpuUsageOut(BaseModel):
    index: int  # the device's index on its host
    util_percent: float
    mem_used_bytes: int
    mem_total_bytes: int


class HostUsageOut(BaseModel):
    """The worker's host at its last heartbeat (worker/usage.py)."""

    cpu_percent: float  # of all the host's cores, 0-100
    mem_used_bytes: int  # total minus available
    mem_total_bytes: int
    gpus: list[GpuUsageOut]  # the worker's GPUs
    sampled_at: float  # unix seconds


class WorkerOut(BaseModel):
    name: str  # host:pid, as a job's `worker` names it; slurm:POOL:NODE for a Slurm node
    host: str
    address: str  # where other nodes reach it
    pool: str
    cpus: int
    concurrency: int  # jobs it runs at once
    started_at: datetime
    heartbeat_at: datetime
    jobs: list[int]  # running jobs it holds
    devices: list[DeviceOut]  # its GPUs (none: a CPU worker)
    peak_flops: float | None = (
        None  # the MFU denominator its trainers get (worker/peak.py); None: not calibrated
    )
    peak_source: str | None = None  # how that peak was measured
    partition: str | None = None  # a Slurm node of this Slurm partition (`vitq slurm`); None: a Celery worker
    usage: HostUsageOut | None = None  # None until its first heartbeat measured it (a Slurm node: never)


class WorkerList(BaseModel):
    items: list[WorkerOut]


class TransferColumn(BaseModel):
    key: str = Field(description="The child metric it shows: few_shot_N (a probe) or val_top1 (a fine-tune).")
    label: str = Field(description='"5-shot", "fine-tune", ...')
    role: str = Field(description='"probe" or "finetune": the child that fills it.')


class TransferRow(BaseModel):
    dataset: str = Field(description="The row's label: the dataset's name (an image folder's: the folder's).")
    data: dict[str, Any] = Field(description="Its data spec, as submitted.")
    values: dict[str, float | None] = Field(
        description="Column key -> the child's final value (null until that child has succeeded)."
    )
    probe: int | None = Field(description="The probe job's id (null: no few-shot columns).")
    finetune: int | None = Field(description="The fine-tune job's id (null: none asked for).")
    status: dict[str, str] = Field(description='"probe" / "finetune" -> that child\'s status.')


class TransferTable(BaseModel):
    columns: list[TransferColumn]
    rows: list[TransferRow] = Field(description="One per dataset, in the order submitted.")
    mean: dict[str, float | None] = Field(
        description="Column key -> the mean over the datasets (null until every row has a value)."
    )


class TransferSummary(BaseModel):
    id: int
    name: str
    created_at: UtcDatetime
    owner: str
    spec: dict[str, Any] = Field(description="The transfer as submitted: source, datasets, few_shot, ...")
    job_count: int
    status_counts: dict[str, int] = Field(description="Children by status.")
    finished: bool = Field(description="Every child has finished.")
    table: TransferTable


class TransferOut(TransferSummary):
    jobs: list[JobOut] = Field(description="The children: per dataset, its probe then its fine-tune.")


class TransferList(BaseModel):
    items: list[TransferSummary]
    total: int
