"""`vitq`: run the service, train locally, and drive a running service from a terminal.

Exit codes: 0 success (for `submit --follow`: the job succeeded); 1 the job failed; 2 a usage error, a bad
spec, or a request the server refused or could not receive (one line on stderr, never a traceback);
3 the job was cancelled; 4 its sweep's pruner stopped it early; 130 interrupted with Ctrl-C (the job itself
keeps running).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from api.cli import transfer_table
from api.cli.exit_codes import (
    EXIT_BROKEN_PIPE,
    EXIT_BY_STATUS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from api.cli.limits import add_commands as add_limits_commands
from api.cli.tokens import add_commands as add_auth_commands
from api.cli.tokens import serve_settings
from api.client import VitqClient, VitqError, default_url


class UsageError(Exception):
    """A problem on the user's side (a missing file, a bad spec): one line on stderr, exit 2."""


# ---------------------------------------------------------------- service processes


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.cli.local_worker import LocalWorker
    from api.core.logging_setup import configure_logging, json_requested
    from api.core.migrate import upgrade
    from api.core.settings import get_settings
    from api.server.app import create_app

    configure_logging(args.log_level)
    settings, auth_line = serve_settings(get_settings(), host=args.host, insecure=args.insecure)
    for directory in (settings.home, settings.resolved_storage, settings.resolved_data_dir):
        directory.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    worker = None if args.no_worker else LocalWorker()
    # uvicorn handles SIGINT; SIGTERM must end it the same way so the worker below is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    print(f"vitq: serving http://{args.host}:{args.port}/ (data in {settings.home})", flush=True)
    print(auth_line, flush=True)
    try:
        # JSON: uvicorn's own loggers go through the root handler too (log_config=None leaves them alone).
        log_config = None if json_requested() else uvicorn.config.LOGGING_CONFIG
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            log_config=log_config,
        )
    finally:
        if worker is not None:
            worker.stop()
    return EXIT_OK


def cmd_worker(_args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "worker"])


def cmd_slurm(args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "worker.slurm", *args.options])


def slurm_options(argv: Sequence[str]) -> list[str] | None:
    """`vitq slurm ...`'s own options (all of them go to the dispatcher, most to sbatch); None for another command."""
    return list(argv[1:]) if argv[:1] == ["slurm"] else None


def cmd_train(args: argparse.Namespace) -> int:
    from vit.train import main as train_main

    return int(train_main([args.spec, "--out", args.out]))


# ---------------------------------------------------------------- client commands


def read_spec(path: str) -> str:
    """The spec file's text, checked to be a YAML/JSON mapping. The fields are validated by the server (the
    same `vit.config.JobSpec`), whose 422 names each bad field; checking here too would cost a torch import."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read spec {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML/JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a spec is a mapping with at least `kind: pretrain` or `kind: finetune`")
    return text


def apply_overrides(text: str, *, from_job: int | None, settings: Sequence[str]) -> str | dict[str, Any]:
    """The spec with `--from-job` (init becomes {from_job: ID}, replacing a local init.weights) and each
    `--set key=value` applied (dotted key, YAML value: 0.01, true, [1, 5], "text"); the text itself when none."""
    if from_job is None and not settings:
        return text  # sent as written, so the server's errors point into the user's own lines
    data: dict[str, Any] = yaml.safe_load(text)
    if from_job is not None:
        data["init"] = {"from_job": from_job}
    for setting in settings:
        key, equals, raw = setting.partition("=")
        if not equals or not key or any(not part for part in key.split(".")):
            raise UsageError(f"--set {setting!r}: expected key=value with a dotted key, e.g. optim.lr=0.01")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UsageError(
                f"--set {setting!r}: the value is not valid YAML: {str(exc).splitlines()[0]}"
            ) from exc
        *sections, leaf = key.split(".")
        node = data
        for depth, section in enumerate(sections):
            if node.get(section) is None:
                node[section] = {}
            node = node[section]
            if not isinstance(node, dict):
                raise UsageError(f"--set {setting!r}: {'.'.join(sections[: depth + 1])} is not a section")
        node[leaf] = value
    return data


def cmd_submit(args: argparse.Namespace, client: VitqClient) -> int:
    try:
        job = client.submit(apply_overrides(read_spec(args.spec), from_job=args.from_job, settings=args.set))
    except VitqError as exc:
        if exc.status_code == 422:
            raise UsageError(f"{args.spec}: {exc}") from exc
        raise
    print(f"submitted job {job['id']} ({job['name']}, {job['kind']}): {client.url}/#/jobs/{job['id']}")
    if not args.follow:
        return EXIT_OK
    return follow_job(client, int(job["id"]), sys.stdout)


def cmd_sweep(args: argparse.Namespace, client: VitqClient) -> int:
    text = read_spec(args.spec)
    try:
        sweep = client.sweep(text)
    except VitqError as exc:
        if exc.status_code == 422:
            raise UsageError(f"{args.spec}: {exc}") from exc
        raise
    if sweep.get("searching"):
        print(
            f"submitted search {sweep['id']} ({sweep['name']}, {sweep['mode']}): up to {sweep['max_jobs']} jobs, "
            f"{sweep['parallel']} at once, {sweep['goal']} {sweep['metric']}; the first {sweep['job_count']}:"
        )
    else:
        print(f"submitted sweep {sweep['id']} ({sweep['name']}): {sweep['job_count']} jobs")
    rows = [
        [str(child["job"]["id"]), child["job"]["name"], *(_cell(child["params"][f]) for f in sweep["fields"])]
        for child in sweep["jobs"]
    ]
    print_table(["ID", "NAME", *(field.upper() for field in sweep["fields"])], rows)
    return EXIT_OK


def cmd_transfer(args: argparse.Namespace, client: VitqClient) -> int:
    """`vitq transfer SPEC [--follow]` submits; `vitq transfer show ID [--csv]` prints the table."""
    if args.target[0] == "show":
        if len(args.target) != 2 or not args.target[1].isdigit():
            raise UsageError("usage: vitq transfer show ID [--csv]")
        transfer_id = int(args.target[1])
        if args.csv:
            sys.stdout.write(client.transfer_csv(transfer_id))
            return EXIT_OK
        transfer = client.transfer_status(transfer_id)
        print(f"transfer {transfer['id']} ({transfer['name']}): {transfer_table.counts(transfer)}")
        print(transfer_table.render(transfer))
        return EXIT_OK
    if len(args.target) != 1:
        raise UsageError("usage: vitq transfer SPEC [--follow] | vitq transfer show ID [--csv]")
    text = read_spec(args.target[0])
    body: str | dict[str, Any] = text
    if args.from_job is not None:
        body = {**yaml.safe_load(text), "source": {"from_job": args.from_job}}
    try:
        transfer = client.transfer(body)
    except VitqError as exc:
        if exc.status_code == 422:
            raise UsageError(f"{args.target[0]}: {exc}") from exc
        raise
    rows = transfer["table"]["rows"]
    print(
        f"submitted transfer {transfer['id']} ({transfer['name']}): {len(rows)} datasets, "
        f"{transfer['job_count']} jobs: {client.url}/#/transfers/{transfer['id']}"
    )
    if not args.follow:
        return EXIT_OK
    done = transfer_table.wait(lambda: client.transfer_status(int(transfer["id"])), sys.stdout)
    print(transfer_table.render(done))
    return transfer_table.exit_code(done)


def _cell(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def follow_job(client: VitqClient, job_id: int, out: TextIO) -> int:
    """Follow the job's events until it ends; a redrawn bar on a terminal, a line per change otherwise."""
    tty = out.isatty()
    last_line = ""
    job = client.get(job_id)
    for kind, data in client.events(job_id):
        if kind not in ("job", "end"):
            continue
        job = data
        line = progress_line(job)
        if tty:
            out.write("\r\033[K" + line)
        elif line != last_line:
            out.write(line + "\n")
        out.flush()
        last_line = line
    if tty:
        out.write("\n")
    if job["status"] == "failed" and job.get("error"):
        print(f"job {job_id} failed:\n{job['error']}", file=sys.stderr)
    return EXIT_BY_STATUS[job["status"]]


def progress_line(job: dict[str, Any], width: int = 24) -> str:
    total = max(int(job.get("total_steps") or 0), 1)
    step = int(job.get("step") or 0)
    filled = round(width * min(step / total, 1.0))
    parts = [f"job {job['id']} {job['status']:<9} [{'#' * filled}{'.' * (width - filled)}] {step}/{total}"]
    metrics = job.get("latest_metrics") or {}
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if job.get("best_val_top1") is not None:
        parts.append(f"val_top1 {job['best_val_top1']:.3f}")
    if job.get("images_per_s"):
        parts.append(f"{job['images_per_s']:.0f} img/s")
    if metrics.get("mfu") is not None:
        peak = f" of {metrics['peak_tflops']:.3g} TFLOP/s" if metrics.get("peak_tflops") else ""
        parts.append(f"MFU {metrics['mfu']:.1%}{peak}")
    if job["status"] == "running" and job.get("eta_seconds") is not None:
        parts.append(f"ETA {format_duration(job['eta_seconds'])}")
    if job["status"] == "queued" and job.get("wait_reason"):
        parts.append(f"({job['wait_reason']})")
    return "  ".join(parts)


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def cmd_ls(args: argparse.Namespace, client: VitqClient) -> int:
    page = client.list(status=args.status, kind=args.kind, limit=args.limit)
    rows = [
        [
            str(job["id"]),
            job["name"],
            job["kind"],
            job["status"],
            f"{job['step']}/{job['total_steps']}",
            "" if job.get("best_val_top1") is None else f"{job['best_val_top1']:.3f}",
            (job.get("created_at") or "")[:19].replace("T", " "),
        ]
        for job in page["items"]
    ]
    print_table(["ID", "NAME", "KIND", "STATUS", "STEP", "VAL_TOP1", "CREATED (UTC)"], rows)
    if page["total"] > len(rows):
        print(f"({len(rows)} of {page['total']} jobs; --limit to see more)")
    return EXIT_OK


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def metric_text(name: str, value: float) -> str:
    """A metric as `vitq show` prints it: the worker's byte samples (sys/rss_bytes) in binary units, as the
    dashboard writes them ("1.1 GiB", not "1.18049e+09")."""
    if name.endswith("_bytes"):
        for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
            if abs(value) >= 1024**power:
                return f"{value / 1024**power:.1f} {unit}"
        return f"{value:.0f} B"
    return f"{value:.6g}"


def cmd_show(args: argparse.Namespace, client: VitqClient) -> int:
    job = client.get(args.id)
    print(progress_line(job))
    fields = ["kind", "name", "attempt", "worker", "parent_job_id", "resumed_from_step", "wait_reason"]
    fields += ["created_at", "started_at", "finished_at"]
    for field in fields:
        if job.get(field) is not None:
            print(f"  {field}: {job[field]}")
    for name, value in sorted((job.get("latest_metrics") or {}).items()):
        print(f"  {name}: {metric_text(name, value)}")
    if job.get("error"):  # the trainer's own lines follow the first: indented under it, not at the margin
        print("  error: " + job["error"].rstrip().replace("\n", "\n    "))
    print("spec:")
    print(yaml.safe_dump(job["spec"], sort_keys=False).rstrip().replace("\n", "\n  ").join(["  ", ""]))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, client: VitqClient) -> int:
    if not args.follow:
        sys.stdout.write(client.logs(args.id, tail=args.tail))
        return EXIT_OK
    for kind, data in client.events(args.id, log_tail=args.tail):
        if kind == "log":
            sys.stdout.write(data if data.endswith("\n") else data + "\n")
            sys.stdout.flush()
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, client: VitqClient) -> int:
    job = client.cancel(args.id)
    state = "cancel requested" if job["status"] == "running" else job["status"]
    print(f"job {job['id']}: {state}")
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace, client: VitqClient) -> int:
    # `since=0` asks for every point (no downsampling): a CSV export should be complete.
    series = client.metrics(args.id, since=0 if args.csv else None)["series"]
    names = sorted(series)
    by_step: dict[int, dict[str, float]] = {}
    for name in names:
        for step, value in zip(series[name]["steps"], series[name]["values"], strict=True):
            by_step.setdefault(int(step), {})[name] = value
    header = ["step", *names]
    rows = [[str(step)] + [_number(by_step[step].get(name)) for name in names] for step in sorted(by_step)]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    else:
        print_table(header, rows)
    return EXIT_OK


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def cmd_download(args: argparse.Namespace, client: VitqClient) -> int:
    path = client.download(args.id, args.checkpoint, args.output)
    print(f"saved {path} ({path.stat().st_size:,} bytes)")
    return EXIT_OK


# ---------------------------------------------------------------- argument parsing


def cmd_data(args: argparse.Namespace) -> int:
    from vit.data.pack import main as data_main  # torchvision: imported only by the commands that need it

    return data_main(args.args, prog="vitq data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitq",
        description="Run the vitq service, train locally, and drive a running service from a terminal.",
        epilog="exit codes: 0 ok (submit --follow: the job succeeded), 1 the job failed, 2 bad usage, bad spec "
        "or a request the server refused or never got, 3 the job was cancelled, 4 pruned by its sweep, 130 Ctrl-C (the job keeps running)",
    )
    parser.add_argument(
        "--url", default=None, help=f"service address (default: $VITQ_URL or {default_url()})"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the API, dashboard and a local worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="API only; start workers separately")
    serve.add_argument(
        "--insecure", action="store_true", help="no authentication even on a non-loopback address"
    )
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(run=cmd_serve)
    commands.add_parser("worker", help="run a worker (python -m worker)").set_defaults(run=cmd_worker)
    slurm = commands.add_parser(
        "slurm",
        help="submit a pool's jobs to Slurm from a login node (--pool NAME --partition P [sbatch options])",
        add_help=False,  # `vitq slurm --help` is the dispatcher's own
    )
    slurm.add_argument("options", nargs=argparse.REMAINDER)
    slurm.set_defaults(run=cmd_slurm)
    add_auth_commands(commands)
    add_limits_commands(commands)
    train = commands.add_parser("train", help="train locally, without the service")
    train.add_argument("spec")
    train.add_argument("--out", required=True, help="run directory (resumes if it holds a checkpoint)")
    train.set_defaults(run=cmd_train)

    submit = commands.add_parser("submit", help="submit a YAML/JSON spec")
    submit.add_argument("spec")
    submit.add_argument("-f", "--follow", action="store_true", help="show progress until the job ends")
    submit.add_argument(
        "--from-job",
        type=int,
        metavar="ID",
        help="fine-tune from this job's checkpoint: init becomes {from_job: ID} (replacing init.weights)",
    )
    submit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, dotted key and YAML value (repeatable): --set optim.lr=0.01",
    )
    submit.set_defaults(call=cmd_submit)
    sweep = commands.add_parser(
        "sweep",
        help="submit a sweep: a base spec and a grid, random or searched (method: tpe) space over its fields",
    )
    sweep.add_argument(
        "spec",
        help="YAML/JSON: name, base, and grid, random or method + space (examples/*-sweep.yaml, *-search.yaml)",
    )
    sweep.set_defaults(call=cmd_sweep)
    transfer = commands.add_parser(
        "transfer",
        help="evaluate a pretrained checkpoint on datasets (few-shot probes, fine-tunes): the transfer table",
    )
    transfer.add_argument(
        "target",
        nargs="+",
        metavar="SPEC | show ID",
        help="YAML/JSON: source, datasets, few_shot, finetune (examples/digits-transfer.yaml); or show ID",
    )
    transfer.add_argument(
        "-f", "--follow", action="store_true", help="wait for the children, print the table"
    )
    transfer.add_argument("--csv", action="store_true", help="show: the table as CSV")
    transfer.add_argument(
        "--from-job",
        type=int,
        metavar="ID",
        help="the source: this job's checkpoint (source becomes {from_job: ID})",
    )
    transfer.set_defaults(call=cmd_transfer)
    ls = commands.add_parser("ls", help="list jobs, newest first")
    ls.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled", "pruned"])
    ls.add_argument("--kind", choices=["pretrain", "finetune"])
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(call=cmd_ls)
    for name in ("show", "status"):
        show = commands.add_parser(name, help="a job's status, metrics and spec")
        show.add_argument("id", type=int)
        show.set_defaults(call=cmd_show)
    logs = commands.add_parser("logs", help="a job's log tail")
    logs.add_argument("id", type=int)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--tail", type=int, default=200)
    logs.set_defaults(call=cmd_logs)
    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("id", type=int)
    cancel.set_defaults(call=cmd_cancel)
    metrics = commands.add_parser("metrics", help="a job's metrics by step (table, or CSV with --csv)")
    metrics.add_argument("id", type=int)
    metrics.add_argument("--csv", action="store_true")
    metrics.set_defaults(call=cmd_metrics)
    download = commands.add_parser("download", help="save a checkpoint's model.safetensors")
    download.add_argument("id", type=int)
    download.add_argument("checkpoint", nargs="?", help="checkpoint name (default: the newest)")
    download.add_argument("-o", "--output", type=Path, help="file to write (default: jobID-NAME.safetensors)")
    download.set_defaults(call=cmd_download)
    data = commands.add_parser(
        "data", help="pack an image folder into shards, check shards (vitq data --help)", add_help=False
    )
    data.add_argument("args", nargs=argparse.REMAINDER)
    data.set_defaults(run=cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = slurm_options(argv)
    if options is not None:  # argparse would take sbatch's options (--time, --help) for its own
        return cmd_slurm(argparse.Namespace(options=options))
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "run", None) is cmd_data:
        args.args = [*unknown, *args.args]  # `vitq data --help` and the data commands' options are theirs
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if hasattr(args, "run"):
            run: Callable[[argparse.Namespace], int] = args.run
            return run(args)
        call: Callable[[argparse.Namespace, VitqClient], int] = args.call
        with VitqClient(args.url) as client:
            return call(args, client)
    except (VitqError, UsageError) as exc:
        print(f"vitq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nvitq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`vitq show 1 | head`): stop quietly, as other Unix tools do. Stdout goes to
        # /dev/null so that the interpreter's last flush does not raise again on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
