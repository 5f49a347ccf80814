"""GET /jobs/{id}/logs: the last lines of train.log, read from the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.server.log_files import BLOCK_BYTES, tail_lines
from tests.api.conftest import Api, submit


def test_tail_of_the_log(api: Api) -> None:
    job_id = submit(api)["id"]
    empty = api.client.get(f"/jobs/{job_id}/logs")
    assert (empty.status_code, empty.text) == (200, "")

    log = api.settings.run_dir(job_id) / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"step {i}\n" for i in range(1, 501)))
    response = api.client.get(f"/jobs/{job_id}/logs", params={"tail": 3})
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "step 498\nstep 499\nstep 500\n"
    assert api.client.get(f"/jobs/{job_id}/logs").text.splitlines()[0] == "step 301"  # default tail 200
    assert api.client.get(f"/jobs/{job_id}/logs", params={"tail": 0}).status_code == 422


@pytest.mark.parametrize("count", [1, 2, 1000, 5000])
def test_tail_lines_across_blocks(tmp_path: Path, count: int) -> None:
    # Lines long enough that the tail spans several blocks; the last line has no newline yet.
    lines = [f"{i:06d} " + "x" * 300 for i in range(3000)]
    path = tmp_path / "train.log"
    path.write_text("\n".join(lines))
    assert path.stat().st_size > 10 * BLOCK_BYTES
    assert tail_lines(path, count) == "\n".join(lines[-count:])
