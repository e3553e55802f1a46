"""`avtime submit --address URL [options] -- avtime <subcommand> ...`: run it as a Ray Job.

See docs/cluster.md for the cluster side (KubeRay, the AWS cluster launcher, the local stack) and
for how secrets travel. The exit status is the job's: 0 when it succeeded, non-zero otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from avtime.pipelines.errors import Interrupted, UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="the Ray dashboard URL, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS)",
    )
    parser.add_argument(
        "--env",
        dest="env_names",
        action="append",
        default=[],
        metavar="NAME",
        help="forward secret variable NAME from your environment (repeatable); its value is "
        "never printed or stored in job metadata",
    )
    parser.add_argument("--no-wait", action="store_true", help="submit and return at once")
    parser.add_argument("--dry-run", action="store_true", help="print the job spec; submit nothing")
    parser.add_argument(
        "--working-dir",
        type=Path,
        default=None,
        help="code to upload as the job's working_dir (default: this avtime checkout)",
    )
    parser.add_argument(
        "--no-working-dir",
        action="store_true",
        help="upload no code: use the avtime installed in the cluster's image",
    )
    parser.add_argument(
        "--exclude",
        dest="excludes",
        action="append",
        default=[],
        metavar="PATTERN",
        help="extra gitignore-style pattern left out of the upload (repeatable)",
    )
    deps = parser.add_mutually_exclusive_group()
    deps.add_argument(
        "--pip", action="store_true", help="install the project's pip requirements in the job"
    )
    deps.add_argument("--image", default=None, help="run the job in this container image")
    parser.add_argument(
        "--mlflow-uri", default=None, help="tracking URI for the job (default: MLFLOW_TRACKING_URI)"
    )
    parser.add_argument(
        "--s3-endpoint", default=None, help="S3 endpoint for the job (default: AWS_ENDPOINT_URL)"
    )
    parser.add_argument("--submission-id", default=None, help="job id (default: generated)")
    parser.add_argument(
        "--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver"
    )
    parser.add_argument(
        "--exec",
        dest="exec_mode",
        action="store_true",
        help="(used inside submitted jobs) load the forwarded secrets, then run the command here",
    )
    parser.add_argument(
        "job_command",
        nargs=argparse.REMAINDER,
        metavar="-- avtime ...",
        help="`--` then the avtime command line to run, e.g. -- avtime train --config smoke",
    )


def run(args: argparse.Namespace) -> int:
    from avtime.training.cluster import submit as sub

    if args.exec_mode:
        return _exec(args.job_command)
    return _submit(args, sub)


def _submit(args: argparse.Namespace, sub) -> int:  # type: ignore[no-untyped-def]
    root = None if args.no_working_dir else (args.working_dir or sub.project_root())
    opts = sub.SubmitOptions(
        address=args.address,
        command=args.job_command,
        env_names=args.env_names,
        working_dir=root,
        excludes=args.excludes,
        pip=args.pip,
        image=args.image,
        mlflow_uri=args.mlflow_uri,
        s3_endpoint=args.s3_endpoint,
        submission_id=args.submission_id,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
    )
    environ = dict(os.environ)
    spec = sub.build_spec(opts, environ)
    for warning in spec.warnings:
        print(f"avtime submit: warning: {warning}", file=sys.stderr)
    if args.dry_run:
        print(sub.render_spec(spec))
        return 0
    from avtime.training.cluster import submit_cluster as cluster

    _quiet_ray_upload_logs()
    client = cluster.connect(spec.address, environ)
    job_id = cluster.submit(client, spec, environ)
    print(f"avtime submit: submitted {job_id} to {spec.address}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        print(
            f"follow it with: ray job logs --follow --address {spec.address} {job_id}",
            file=sys.stderr,
        )
        return 0
    try:
        code = cluster.follow(client, job_id, sys.stdout)
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped following; the job keeps running. Stop it with: "
            f"ray job stop --address {spec.address} {job_id}"
        ) from None
    info = client.get_job_info(job_id)
    status = str(info.status).split(".")[-1]
    # the message ends with the last logs, which were streamed already
    message = (info.message or "").split(", last available logs")[0].splitlines()[:1]
    print(f"avtime submit: job {job_id} {status}: {''.join(message)}".rstrip(), file=sys.stderr)
    return code


def _quiet_ray_upload_logs() -> None:
    """Ray logs one INFO line per ignored file while packaging; keep warnings only."""
    import logging

    import ray.job_submission  # noqa: F401  (its modules set their log levels on import)

    logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)
    # "Directory '.git' is now ignored by default": true, and said on every submit
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)


def _exec(command: list[str]) -> int:
    """Inside the job: export the forwarded secrets, then run the avtime command in-process."""
    from avtime.training.cli.main import main
    from avtime.training.cluster import jobenv

    cmd = command[1:] if command[:1] == ["--"] else command
    if not cmd or cmd[0] != "avtime":
        raise UsageError("--exec: expected `-- avtime <subcommand> ...`")
    names = jobenv.load_into_environ()
    print(f"[avtime job] forwarded secrets: {', '.join(names) or 'none'}", file=sys.stderr)
    return main(cmd[1:])
