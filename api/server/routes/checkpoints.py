"""Checkpoints of a job: listed from the database, downloaded from the run directory. A download path is built
from the job id and a name the database lists, never from what the client sent."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse

from api.core import reads
from api.core.schemas import CheckpointList, CheckpointOut
from api.server.auth import PrincipalDep
from api.server.deps import NO_NUL, JobId, SessionDep, SettingsDep

router = APIRouter(tags=["checkpoints"])
WEIGHTS_FILE = "model.safetensors"
CheckpointName = Annotated[str, Path(max_length=255, pattern=NO_NUL, description="A name the list gives.")]


@router.get("/jobs/{job_id}/checkpoints", responses={404: {}})
def list_checkpoints(job_id: JobId, session: SessionDep, principal: PrincipalDep) -> CheckpointList:
    reads.get_job(session=session, job_id=job_id, principal=principal)
    rows = reads.list_checkpoints(session=session, job_id=job_id, principal=principal)
    return CheckpointList(
        items=[
            CheckpointOut(
                name=c.name,
                step=c.step,
                size_bytes=c.size_bytes,
                created_at=c.created_at,
                url=f"/jobs/{job_id}/checkpoints/{c.name}",
            )
            for c in rows
        ]
    )


@router.get(
    "/jobs/{job_id}/checkpoints/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 404: {}},
)
def download_checkpoint(
    job_id: JobId, name: CheckpointName, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> FileResponse:
    """The checkpoint's weights (timm key names): loadable by `vit.load_pretrained` and by timm."""
    reads.get_job(session=session, job_id=job_id, principal=principal)
    checkpoint = reads.find_checkpoint(session=session, job_id=job_id, name=name, principal=principal)
    # The stored name is a directory name the worker registered; refuse anything that could leave the run dir.
    if checkpoint is None or "/" in checkpoint.name or checkpoint.name in ("", ".", ".."):
        raise HTTPException(404, f"job {job_id} has no checkpoint {name!r}")
    path = settings.run_dir(job_id) / "checkpoints" / checkpoint.name / WEIGHTS_FILE
    if not path.is_file():
        raise HTTPException(404, f"checkpoint {checkpoint.name} of job {job_id} is no longer on disk")
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"job{job_id}-{checkpoint.name}.safetensors"
    )
