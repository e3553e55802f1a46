"""The one error type: each `AvtimeError` kind maps to its exit code and one line, the known
environment faults too, and no command module handles errors itself (`main` alone does)."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from avtime.pipelines import errors
from avtime.pipelines.configlib import ConfigError
from avtime.pipelines.datasets.adapters import LayoutError
from avtime.pipelines.ingest.job import IngestError
from avtime.pipelines.ingest.listing import ListingError
from avtime.pipelines.ingest.lock import LockError
from avtime.pipelines.storage import StorageError
from avtime.pipelines.verify.job import VerifyError
from avtime.training.cli.errors import classify
from avtime.training.cli.main import main
from avtime.training.cluster.submit import SubmitError
from avtime.training.engine.checkpoint import CheckpointError
from avtime.training.tracking.compare import CompareError

pytestmark = pytest.mark.unit

COMMANDS = Path(__file__).parents[3] / "training" / "cli" / "commands"

# every kind of AvtimeError that exists, and the exit code README documents for it
KINDS: list[tuple[type[errors.AvtimeError], int]] = [
    (errors.AvtimeError, 1),
    (errors.JobError, 1),
    (IngestError, 1),
    (LockError, 1),
    (errors.UsageError, 2),
    (errors.MissingInputError, 2),
    (ConfigError, 2),
    (LayoutError, 2),
    (ListingError, 2),
    (CheckpointError, 2),
    (CompareError, 2),
    (VerifyError, 2),
    (errors.StoreError, 2),
    (StorageError, 2),
    (errors.ClusterError, 2),
    (SubmitError, 2),
    (errors.TrackingError, 2),
    (errors.Interrupted, 130),
]


@pytest.mark.parametrize(("kind", "code"), KINDS, ids=[k.__name__ for k, _ in KINDS])
def test_each_kind_has_its_code_and_one_line(kind: type[errors.AvtimeError], code: int) -> None:
    exc = kind("what went wrong\n  and what to do")
    assert exc.exit_code == code
    assert classify(exc) == (code, kind.prefix + "what went wrong and what to do")


def test_the_kinds_keep_the_builtin_bases_callers_catch() -> None:
    for kind in (ConfigError, LayoutError, ListingError, CheckpointError, errors.UsageError):
        assert issubclass(kind, ValueError), kind
    for kind in (StorageError, IngestError, LockError, VerifyError):
        assert issubclass(kind, RuntimeError), kind
    assert ConfigError("x").line() == "config error: x"


class _RayTaskError(Exception):  # the shape of Ray's wrapper: the real error in .cause
    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray::task() (pid=1)\nTraceback ...\nlong remote traceback")
        self.cause = cause


def test_a_wrapped_avtime_error_keeps_its_code_and_line() -> None:
    wrapped = _RayTaskError(StorageError("bucket s3://b does not exist; create it first"))
    assert classify(wrapped) == (2, "bucket s3://b does not exist; create it first")
    try:
        try:
            raise ValueError("inner")
        except ValueError as inner:
            raise IngestError("ingest task failed: inner") from inner
    except IngestError as exc:
        assert classify(exc) == (1, "ingest task failed: inner")


def test_environment_faults() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out")
    assert classify(full) == (
        1,
        "no space left on the device at /data/out; free some space and rerun",
    )
    assert classify(KeyboardInterrupt()) == (130, "interrupted")
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "nowhere")
    assert classify(missing) == (2, "nowhere: no such file or directory")
    assert classify(ValueError("model.dim must be > 0")) == (2, "model.dim must be > 0")
    code, line = classify(RuntimeError("boom\nsecond"))
    assert code == 1 and line.startswith("RuntimeError: boom second") and "--debug" in line


def test_s3_faults_are_matched_by_type(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://user:pw@s3.local:8333")
    code, line = classify(_RayTaskError(EndpointConnectionError(endpoint_url="http://x")))
    assert code == 2 and line.startswith("cannot reach S3 at http://***@s3.local:8333")
    assert "pw" not in line
    denied = ClientError({"Error": {"Code": "InvalidAccessKeyId"}}, "ListObjectsV2")
    assert classify(denied)[0] == 2 and "refused the credentials" in classify(denied)[1]
    assert classify(NoCredentialsError()) == (
        2, "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )  # fmt: skip


def _mlflow_request(url: str) -> None:
    """What MLflow's rest_utils does when the server does not answer."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        raise requests.exceptions.ConnectionError("Max retries exceeded with url: /api")
    except requests.exceptions.ConnectionError as e:
        raise MlflowException(f"API request to {url} failed with exception {e}")  # noqa: B904


def test_mlflow_unreachable_is_a_store_error() -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as info:
        _mlflow_request("http://u:secret@127.0.0.1:9/api/2.0/mlflow/experiments/get-by-name")
    code, line = classify(info.value)
    assert code == 2 and line.startswith("cannot reach the MLflow server") and "secret" not in line
    assert classify(MlflowException("RESOURCE_DOES_NOT_EXIST: no such run"))[0] == 1


def test_usage_errors_exit_2_through_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", "shards", "--n", "0", "--out", "o.npz"]) == 2
    assert capsys.readouterr().err == "avtime sample: --n must be >= 1\n"
    assert main(["verify", "shards", "--top", "-1"]) == 2
    assert "--cpus-per-task must be > 0" in capsys.readouterr().err


def test_a_missing_preprocess_input_exits_2_saying_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing-folder")
    assert main(["preprocess", missing, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"avtime preprocess: {missing} does not exist: pass a folder of videos")


HANDLER = re.compile(r"^(\s*)except\b[^\n]*:\n((?:\1\s+[^\n]*\n|\s*\n)*)", re.MULTILINE)


def test_no_command_handles_its_own_errors() -> None:
    """A command raises; only `main` prints an error and picks an exit code. So no `except`
    block in a command module prints to stderr, returns a code or calls sys.exit (demo.py
    stops its steps with SystemExit on purpose: it reports a step's exit code)."""
    offenders = []
    for path in sorted(COMMANDS.glob("*.py")):
        if path.name == "demo.py":
            continue
        for match in HANDLER.finditer(path.read_text()):
            body = match.group(2)
            if re.search(r"sys\.stderr|sys\.exit|\breturn\s+\d|SystemExit", body):
                offenders.append(f"{path.name}: {match.group(0).strip()[:80]}")
    assert offenders == []
    assert "not available in this build" not in (COMMANDS.parent / "main.py").read_text()
    assert "not available in this build" not in (COMMANDS / "eval.py").read_text()


def test_the_scan_finds_a_handler() -> None:
    source = "def run():\n    try:\n        go()\n    except OSError as e:\n" \
             "        print(e, file=sys.stderr)\n        return 2\n"  # fmt: skip
    bodies = [m.group(2) for m in HANDLER.finditer(source)]
    assert len(bodies) == 1 and "sys.stderr" in bodies[0] and "return 2" in bodies[0]


def test_no_error_is_matched_by_its_class_name() -> None:
    cli_errors = (COMMANDS.parent / "errors.py").read_text()
    assert "__name__ in" not in cli_errors and "USER_ERRORS" not in cli_errors
