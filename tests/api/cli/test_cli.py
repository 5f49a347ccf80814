"""`vitq` against the real embedded service: real SQLite, broker, worker and (tiny) training."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from api.cli.main import UsageError, apply_overrides, main
from api.client import VitqClient, VitqError
from tests.api.cli.service import VITQ, Service, free_port, service_env, tiny_spec, wait_for
from tests.vit.shard_helpers import write_photos

# Submodules, not `vit`: under pytest, tests/vit/ (no __init__.py) can shadow the package's __init__.
from vit.model import create_model
from vit.weights import load_pretrained


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_submit_follow_succeeds_then_inspect_and_download(service: Service, tmp_path: Path) -> None:
    spec = write(tmp_path / "tiny.yaml", tiny_spec("cli-ok", steps=30))
    result = service.cli("submit", spec, "--follow")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    job_id = int(lines[0].split()[2])
    assert "/30" in result.stdout and "loss" in result.stdout  # plain progress lines: not a TTY
    assert lines[-1].startswith(f"job {job_id} succeeded") and "30/30" in lines[-1]

    listing = service.cli("ls", "--status", "succeeded")
    assert any(
        line.split()[:4] == [str(job_id), "cli-ok", "pretrain", "succeeded"]
        for line in listing.stdout.splitlines()
    )
    shown = service.cli("status", str(job_id))
    assert "succeeded" in shown.stdout and "depth: 1" in shown.stdout
    assert (
        re.search(r"MFU \d+\.\d% of [\d.e+-]+ TFLOP/s", shown.stdout.splitlines()[0])
        and "  mfu: " in shown.stdout
    )
    # The worker's memory sample in binary units, as the dashboard shows it (it read "1.18049e+09").
    assert re.search(r"^  sys/rss_bytes: [\d.]+ [KMG]iB$", shown.stdout, re.M), shown.stdout
    # `vitq show 1 | head`: a reader that stops early ends the command quietly, without a traceback.
    piped = subprocess.Popen(
        [VITQ, "show", str(job_id)], env=service.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert piped.stdout is not None and piped.stderr is not None
    piped.stdout.close()  # the reader is gone before the first line is written
    assert piped.wait(timeout=60) == 141
    assert piped.stderr.read() == b""
    metrics = service.cli("metrics", str(job_id), "--csv")
    header, *rows = metrics.stdout.splitlines()
    assert header.split(",")[0] == "step" and {"loss", "lr", "val_top1"} <= set(header.split(","))
    assert rows[-1].split(",")[0] == "30"
    assert service.cli("logs", str(job_id)).stdout.strip()

    out = tmp_path / "weights.safetensors"
    downloaded = service.cli("download", str(job_id), "-o", str(out))
    assert downloaded.returncode == 0, downloaded.stderr
    model = create_model(
        "Ti/4", num_classes=10, image_size=16, depth=1, embed_dim=32, num_heads=2, mlp_dim=64
    )
    report = load_pretrained(model, out)
    assert not report.missing and not report.unexpected and not report.head_reset
    nowhere = tmp_path / "missing-dir" / "weights.safetensors"
    unwritable = service.cli("download", str(job_id), "-o", str(nowhere))
    assert unwritable.returncode == 2 and one_line_error(unwritable).startswith(
        f"vitq: cannot write {nowhere}"
    )


def test_cancel_exits_3_its_waiting_finetune_fails_with_1_and_logs_follow_ends(
    service: Service, client: VitqClient, tmp_path: Path
) -> None:
    spec = write(tmp_path / "long.yaml", tiny_spec("cli-cancel", steps=100_000))
    follow = subprocess.Popen(
        [VITQ, "submit", spec, "--follow"], env=service.env, stdout=subprocess.PIPE, text=True
    )
    job_id = wait_for(
        lambda: next((j["id"] for j in client.list()["items"] if j["name"] == "cli-cancel"), None)
    )
    wait_for(lambda: client.get(job_id)["step"] > 0)
    logs = subprocess.Popen(
        [VITQ, "logs", str(job_id), "-f"], env=service.env, stdout=subprocess.PIPE, text=True
    )
    # A fine-tune of the running job waits for it; when that job is cancelled, the fine-tune fails.
    finetune = write(
        tmp_path / "finetune.yaml", f"kind: finetune\nname: cli-waits\ninit: {{from_job: {job_id}}}\n"
    )
    finetune_follow = subprocess.Popen(
        [VITQ, "submit", finetune, "--follow"],
        env=service.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: any(j["name"] == "cli-waits" for j in client.list(status="queued")["items"]))

    cancelled = service.cli("cancel", str(job_id))
    assert cancelled.returncode == 0 and f"job {job_id}: cancel requested" in cancelled.stdout
    assert follow.wait(60) == 3
    assert logs.wait(30) == 0
    assert "step" in (logs.stdout.read() if logs.stdout else "")
    out, err = finetune_follow.communicate(timeout=30)
    assert finetune_follow.returncode == 1, out + err
    assert "failed" in out.splitlines()[-1] and f"job {job_id} was cancelled" in err
    job = client.get(job_id)
    assert job["status"] == "cancelled" and 0 < job["step"] < 100_000
    assert client.checkpoints(job_id), "a cancelled job keeps the checkpoint it saved on SIGTERM"
    again = service.cli("cancel", str(job_id))
    assert "cannot be cancelled" in one_line_error(again)


def test_bad_spec_file_gives_one_line(service: Service, tmp_path: Path) -> None:
    spec = write(tmp_path / "bad.yaml", "kind: pretrain\noptim: {lr: -1}\n")
    line = one_line_error(service.cli("submit", spec))
    assert "optim.lr" in line and "greater than 0" in line
    assert "cannot read spec" in one_line_error(service.cli("submit", str(tmp_path / "missing.yaml")))
    broken = write(tmp_path / "broken.yaml", "kind: [pretrain\n")
    assert "not valid YAML" in one_line_error(service.cli("submit", broken))


def test_server_refusal_gives_one_line(service: Service, client: VitqClient, tmp_path: Path) -> None:
    # Valid locally; the server knows there is no job 999999 to fine-tune from.
    spec = write(tmp_path / "orphan.yaml", "kind: finetune\ninit: {from_job: 999999}\n")
    assert "999999" in one_line_error(service.cli("submit", spec))
    assert "not found" in one_line_error(service.cli("show", "999999"))
    with pytest.raises(VitqError, match=r"optim\.lr") as raised:
        client.submit({"kind": "pretrain", "optim": {"lr": -1}})
    assert raised.value.status_code == 422


def test_unreachable_server_gives_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [VITQ, "--url", url, "ls"],
        env=service_env(tmp_path, url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert f"cannot reach the vitq server at {url}" in one_line_error(result)


def test_set_overrides_parse_dotted_keys_and_yaml_values() -> None:
    text = "kind: finetune\noptim: {lr: 0.03}\ninit: {weights: runs/pre}\n"
    settings = [
        "optim.lr=0.01",
        "train.steps=200",
        "eval.few_shot=[1, 5]",
        "data.augment=none",
        "init.checkpoint=step-000100",
    ]
    assert apply_overrides(text, from_job=7, settings=settings) == {
        "kind": "finetune",
        "optim": {"lr": 0.01},
        "train": {"steps": 200},
        "eval": {"few_shot": [1, 5]},
        "data": {"augment": "none"},
        "init": {"from_job": 7, "checkpoint": "step-000100"},  # from_job replaces the local weights path
    }
    assert apply_overrides(text, from_job=None, settings=[]) == text  # untouched: errors point into the file
    for bad, words in [
        ("optim.lr", "expected key=value"),
        ("=1", "expected key=value"),
        ("optim..lr=1", "dotted"),
        ("optim.lr.x=1", "optim.lr is not a section"),
        ("name=[1", "not valid YAML"),
    ]:
        with pytest.raises(UsageError, match=re.escape(words)):
            apply_overrides(text, from_job=None, settings=[bad])


def test_the_readme_finetune_works_from_a_terminal(service: Service, tmp_path: Path) -> None:
    pretrain = write(tmp_path / "pre.yaml", tiny_spec("cli-pre", steps=10))
    result = service.cli("submit", pretrain, "--follow")
    assert result.returncode == 0, result.stdout + result.stderr
    parent = int(result.stdout.split()[2])
    # A fine-tune spec written for local training (init.weights: a local run directory) ...
    local = (
        tiny_spec("cli-ft", steps=10).replace("kind: pretrain", "kind: finetune")
        + "init: {weights: runs/pre}\n"
    )
    spec = write(tmp_path / "ft.yaml", local)
    refused = one_line_error(service.cli("submit", spec))
    assert "init.weights" in refused and "no weights at" in refused and "init.from_job" in refused
    # ... runs on the service from the pretrain job, with overrides.
    result = service.cli(
        "submit",
        spec,
        "--from-job",
        str(parent),
        "--set",
        "optim.lr=0.02",
        "--set",
        "train.steps=6",
        "--follow",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    job = VitqClient(service.url).get(int(result.stdout.split()[2]))
    assert (job["parent_job_id"], job["spec"]["init"]["from_job"], job["spec"]["init"].get("weights")) == (
        parent,
        parent,
        None,
    )
    assert (job["spec"]["optim"]["lr"], job["total_steps"], job["status"]) == (0.02, 6, "succeeded")
    assert "expected key=value" in one_line_error(service.cli("submit", spec, "--set", "optim.lr"))


def test_sweep_submits_every_child_and_refuses_an_unknown_field(service: Service, tmp_path: Path) -> None:
    base = yaml.safe_load(tiny_spec("cli-sweep", steps=4))
    spec = write(
        tmp_path / "sweep.yaml", yaml.safe_dump({"base": base, "grid": {"optim.lr": [0.001, 0.003]}})
    )
    result = service.cli("sweep", spec)
    assert result.returncode == 0, result.stdout + result.stderr
    first, header, *rows = result.stdout.splitlines()
    assert first.startswith("submitted sweep ") and first.endswith("(cli-sweep): 2 jobs")
    assert header.split() == ["ID", "NAME", "OPTIM.LR"]
    assert [row.split()[-1] for row in rows] == ["0.001", "0.003"]
    client = VitqClient(service.url)
    assert [client.get(int(row.split()[0]))["spec"]["optim"]["lr"] for row in rows] == [0.001, 0.003]
    bad = write(tmp_path / "bad.yaml", yaml.safe_dump({"base": base, "grid": {"optim.lrr": [0.001]}}))
    assert "unknown spec field 'optim.lrr'" in one_line_error(service.cli("sweep", bad))
    search = {"base": base, "method": "random", "space": {"optim.lr": [0.002]}, "max_jobs": 1}
    result = service.cli("sweep", write(tmp_path / "search.yaml", yaml.safe_dump(search)))
    first, header, row = result.stdout.splitlines()
    assert first.startswith("submitted search ") and first.endswith(
        "(cli-sweep, random): up to 1 jobs, 1 at once, maximize val_top1; the first 1:"
    )
    assert row.split()[-1] == "0.002"


def test_transfer_follows_to_the_table_and_shows_it_again(service: Service, tmp_path: Path) -> None:
    pretrain = VitqClient(service.url).submit(yaml.safe_load(tiny_spec("cli-transfer-source", steps=4)))
    transfer = {
        "name": "cli",
        "source": {"from_job": 999999},  # replaced by --from-job
        "base": {"train": {"batch_size": 32}, "resources": {"device": "cpu"}},
        "datasets": [{"dataset": "digits"}],
        "few_shot": [1, 5],
    }
    spec = write(tmp_path / "transfer.yaml", yaml.safe_dump(transfer))
    result = service.cli("transfer", spec, "--from-job", str(pretrain["id"]), "--follow", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    first, *progress, header, rule, row, _rule, mean = result.stdout.splitlines()
    transfer_id = int(first.split()[2])
    assert first.startswith(f"submitted transfer {transfer_id} (cli): 1 datasets, 1 jobs: ")
    assert progress[-1] == f"transfer {transfer_id}: 1 succeeded"
    assert header.split() == ["dataset", "1-shot", "5-shot"] and set(rule) == {"-", " "}
    values = VitqClient(service.url).transfer_status(transfer_id)["table"]["rows"][0]["values"]
    assert row.split() == ["digits", f"{values['few_shot_1'] * 100:.1f}", f"{values['few_shot_5'] * 100:.1f}"]
    assert mean.split()[1:] == row.split()[1:]  # one dataset: the mean is its row

    shown = service.cli("transfer", "show", str(transfer_id))
    assert shown.returncode == 0 and shown.stdout.splitlines() == [
        f"transfer {transfer_id} (cli): 1 succeeded",
        *(header, rule, row, _rule, mean),
    ]
    as_csv = service.cli("transfer", "show", str(transfer_id), "--csv").stdout
    assert as_csv == VitqClient(service.url).transfer_csv(transfer_id)
    assert as_csv.splitlines()[1] == f"digits,{values['few_shot_1']!r},{values['few_shot_5']!r}"
    assert "source.from_job" in one_line_error(service.cli("transfer", spec))  # job 999999 does not exist
    assert "usage: vitq transfer show ID" in one_line_error(service.cli("transfer", "show", "x"))


def test_vitq_data_packs_an_image_folder_and_checks_the_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_photos(tmp_path / "images", per_class=2)
    shards = tmp_path / "shards"
    assert main(["data", "pack", str(tmp_path / "images"), str(shards)]) == 0
    assert main(["data", "check", str(shards)]) == 0
    (shard,) = sorted(shards.glob("train-*.tar"))
    shard.write_bytes(shard.read_bytes()[:-1024])  # truncated
    capsys.readouterr()
    assert main(["data", "check", str(shards)]) == 1
    assert shard.name in "".join(capsys.readouterr())
