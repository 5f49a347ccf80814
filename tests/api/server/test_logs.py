"""GET /jobs/{id}/logs: the last lines of train.log, read from the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.core import tokens
from api.server.log_files import BLOCK_BYTES, tail_lines
from tests.api.conftest import TINY_SPEC, Api, submit


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


def write_log(api: Api, job_id: int, content: bytes) -> Path:
    path = api.settings.run_dir(job_id) / "train.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_the_whole_log_a_page_at_a_time(api: Api) -> None:
    job_id = submit(api)["id"]
    empty = api.client.get(f"/jobs/{job_id}/logs/lines").json()
    assert empty == {"start": 1, "lines": [], "total_lines": 0, "size_bytes": 0}
    write_log(api, job_id, "".join(f"step {i}\n" for i in range(1, 1201)).encode() + b"no newline yet")
    page = api.client.get(f"/jobs/{job_id}/logs/lines", params={"start": 1000, "count": 3}).json()
    assert (page["start"], page["lines"], page["total_lines"]) == (
        1000,
        ["step 1000", "step 1001", "step 1002"],
        1201,
    )
    last = api.client.get(f"/jobs/{job_id}/logs/lines", params={"start": 1199}).json()["lines"]
    assert last == ["step 1199", "step 1200", "no newline yet"]  # the line being written counts
    assert api.client.get(f"/jobs/{job_id}/logs/lines", params={"start": 5000}).json()["lines"] == []
    for bad in ({"start": 0}, {"count": 0}, {"count": 5001}):
        assert api.client.get(f"/jobs/{job_id}/logs/lines", params=bad).status_code == 422


def test_search_finds_lines_by_literal_text(api: Api) -> None:
    job_id = submit(api)["id"]
    huge = b"x" * 3_000_000 + b"CUDA error: out of memory" + b"y" * 3_000_000  # one line across blocks
    write_log(
        api,
        job_id,
        b"step 1 loss 2.3\nWarning: slow [a-z]+ loader\nstep 2 ERROR\n" + huge + b"\nerror again\n",
    )

    def found(**params: object) -> dict[str, object]:
        response = api.client.get(f"/jobs/{job_id}/logs/search", params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    lines = lambda result: [(m["line"], m["text"]) for m in result["matches"]]  # noqa: E731
    assert lines(found(q="error"))[0] == (3, "step 2 ERROR")  # case-blind by default
    assert [m["line"] for m in found(q="error")["matches"]] == [3, 4, 5]
    assert lines(found(q="ERROR", match_case="true")) == [(3, "step 2 ERROR")]
    assert lines(found(q="[a-z]+")) == [(2, "Warning: slow [a-z]+ loader")]  # literal: no regex
    assert found(q="nothing like this") == {
        "query": "nothing like this",
        "match_case": False,
        "matches": [],
        "more": False,
    }
    # The huge line is found and comes back as the part around the match, marked as cut.
    (match,) = found(q="out of memory")["matches"]
    assert match["line"] == 4 and match["cut"] and "CUDA error: out of memory" in match["text"]
    assert match["text"].startswith("…") and match["text"].endswith("…") and len(match["text"]) <= 2002
    limited = found(q="step", limit=1)
    assert ([m["line"] for m in limited["matches"]], limited["more"]) == ([1], True)
    for bad in ({"q": ""}, {"q": "a\nb"}, {"q": "x" * 201}, {"q": "a", "limit": 0}, {}):
        assert api.client.get(f"/jobs/{job_id}/logs/search", params=bad).status_code == 422


def test_download_streams_the_whole_file(api: Api) -> None:
    job_id = submit(api)["id"]
    assert api.client.get(f"/jobs/{job_id}/logs/download").json() == {
        "detail": f"job {job_id} has no log yet"
    }
    content = bytes(range(256)) * 20_000 + "ünïcode\n".encode()  # 5 MB, any bytes: sent as stored
    write_log(api, job_id, content)
    response = api.client.get(f"/jobs/{job_id}/logs/download")
    assert response.status_code == 200 and response.content == content
    assert response.headers["content-disposition"] == f'attachment; filename="job{job_id}-train.log"'
    assert response.headers["content-type"].startswith("text/plain")


def test_another_owners_log_is_not_found(api: Api) -> None:
    api.settings.auth = "required"
    with api.session() as session:
        _row, alice = tokens.create(session=session, owner="alice")
        _row, bob = tokens.create(session=session, owner="bob")
    job_id = api.client.post("/jobs", json=TINY_SPEC, headers={"authorization": f"Bearer {bob}"}).json()["id"]
    write_log(api, job_id, b"bob's secret line\n")
    for path, params in (
        ("/logs/search", {"q": "secret"}),
        ("/logs/lines", {}),
        ("/logs/download", {}),
        ("/logs", {}),
    ):
        as_alice = api.client.get(
            f"/jobs/{job_id}{path}", params=params, headers={"authorization": f"Bearer {alice}"}
        )
        assert as_alice.status_code == 404 and b"secret" not in as_alice.content, path
        as_bob = api.client.get(
            f"/jobs/{job_id}{path}", params=params, headers={"authorization": f"Bearer {bob}"}
        )
        assert as_bob.status_code == 200 and b"secret" in as_bob.content, path
