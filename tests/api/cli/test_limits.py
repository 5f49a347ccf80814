"""`vitq limits show|set|unset` against the configured database (real `vitq` processes, no server)."""

from __future__ import annotations

from pathlib import Path

from tests.api.cli.test_tokens import env, vitq  # noqa: F401 (env is a fixture)


def test_set_show_unset(env: dict[str, str]) -> None:  # noqa: F811
    env = {**env, "VITQ_MAX_IMAGE_SIZE": "384"}
    made = vitq(
        env, "limits", "set", "alice", "max_job_params=100M", "max_log_bytes=none", "max_image_size=1_024"
    )
    assert made.returncode == 0, made.stderr
    assert (
        made.stdout.strip() == "alice: max_job_params 100,000,000, max_log_bytes none, max_image_size 1,024"
    )
    shown = vitq(env, "limits", "show").stdout
    defaults = {line.split()[0]: line.split()[1] for line in shown.split("\n\n")[0].splitlines()[1:]}
    assert defaults == {
        "max_job_params": "none",
        "max_image_size": "384",
        "max_job_images": "none",
        "max_keep_checkpoints": "none",
        "max_log_bytes": "none",
    }
    assert shown.split("\n\n")[1].split() == [
        "alice:", "max_image_size", "1,024", "max_job_params", "100,000,000", "max_log_bytes", "none"
    ]  # fmt: skip
    unset = vitq(env, "limits", "unset", "alice", "max_job_params", "max_image_size")
    assert unset.stdout.startswith("alice: 2 of their own limits dropped")
    assert vitq(env, "limits", "show").stdout.split("\n\n")[1].split() == ["alice:", "max_log_bytes", "none"]


def test_bad_names_and_values_are_usage_errors(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    for args, said in [
        (["set", "alice", "max_gpus=2"], "NAME one of max_job_params"),
        (["set", "alice", "max_job_params=0"], "a limit is a positive count"),
        (["set", "alice", "max_job_params=lots"], "a limit is a positive count"),
        (["set", "alice", "max_log_bytes=9999999999G"], "a limit is a positive count"),  # past BIGINT
        (["unset", "alice", "max_jobs"], "the limits are max_job_params"),
    ]:
        refused = vitq(env, "limits", *args)
        assert refused.returncode == 2 and said in refused.stderr, (args, refused.stderr)
    assert "alice" not in vitq(env, "limits", "show").stdout
