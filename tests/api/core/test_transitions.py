"""The state machine's declared transitions are the only way a job's status changes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.core import state_machine as sm
from api.core.models import JobStatus
from tests.api.core.test_state_machine import add_job, claim, get_job

CHECKOUT = Path(__file__).resolve().parents[3]


def status_writes(path: Path) -> list[str]:
    """Every `.values(status=...)` / `.values(**{"status": ...})` and every `Job.status = ...` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values":
            keys = [k.arg for k in node.keywords] + [
                key.value
                for arg in node.args
                if isinstance(arg, ast.Dict)
                for key in arg.keys
                if isinstance(key, ast.Constant)
            ]
            if "status" in keys:
                found.append(f"{path.relative_to(CHECKOUT)}:{node.lineno}")
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
                found.append(f"{path.relative_to(CHECKOUT)}:{node.lineno}")
    return found


def test_only_the_declared_transitions_write_a_jobs_status() -> None:
    files = [*(CHECKOUT / "api").rglob("*.py"), *(CHECKOUT / "worker").rglob("*.py")]
    writes = [w for path in files for w in status_writes(path)]
    (move,) = [w for w in writes if w.startswith("api/core/state_machine.py")]
    assert writes == [move]  # the one UPDATE in move()


def test_the_table_declares_each_state_and_no_move_out_of_a_finished_one() -> None:
    targets = {t.target for t in sm.TRANSITIONS.values()}
    sources = {s for t in sm.TRANSITIONS.values() for s in t.sources}
    assert targets | {JobStatus.queued} == set(JobStatus)  # queued: the state a submit inserts
    assert not any(JobStatus(s).finished for s in sources)
    assert set(sm.FINISH) == set(sm.FINISHED)
    with pytest.raises(ValueError, match="undeclared transition 'resurrect'"):
        sm.move("resurrect")


def test_a_declared_move_from_a_state_it_does_not_leave_changes_nothing(engine: Engine) -> None:
    job_id = add_job(engine)
    with Session(engine) as session:
        held = claim(session, "w1")
        assert sm.finish(session=session, claim=held, status=JobStatus.succeeded)
        # Still "held" by every column but its status: succeeded is not a source of any move.
        assert not sm.finish(session=session, claim=held, status=JobStatus.failed)
        assert not sm.release(session=session, claim=held)
        result = session.execute(sm.move("requeue", sm.Job.id == job_id))
        assert not sm.won(result)
        session.commit()
    assert get_job(engine, job_id).status == JobStatus.succeeded
