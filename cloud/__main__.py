"""``edgecap worker transcribe|reconcile|detect`` (also ``python -m cloud …``): run one cloud worker."""

from __future__ import annotations

import argparse
import logging

from cloud.metrics import serve
from cloud.settings import WorkerSettings
from runtime.kafka import BatchWorker
from runtime.service import add_common_options, prepare, stop_on_signals

log = logging.getLogger(__name__)

WORKERS = {
    "transcribe": "transcribe segments with Whisper (consumer group edgecap-transcribe)",
    "reconcile": "merge drafts and transcripts into final captions (consumer group edgecap-reconcile)",
    "detect": "find objects in camera frames (consumer group edgecap-detect)",
}


def _worker(name: str, settings: WorkerSettings) -> BatchWorker:
    """The worker called ``name``, its model loaded (each imports only what it needs)."""
    if name == "transcribe":
        from cloud.transcribe import TranscribeWorker

        return TranscribeWorker(settings)
    if name == "detect":
        from cloud.detect.worker import DetectWorker

        return DetectWorker(settings)
    from cloud.reconcile import Reconciler

    return Reconciler(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecap worker", description="Run a cloud worker.")
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common)
    sub = parser.add_subparsers(dest="worker", required=True, metavar="{transcribe,reconcile,detect}")
    for name, help_ in WORKERS.items():
        sub.add_parser(name, parents=[common], help=help_, description=help_)
    args = parser.parse_args(argv)
    settings = prepare(WorkerSettings, args, f"worker-{args.worker}")
    if isinstance(settings, int):
        return settings
    stop = stop_on_signals()
    serve(settings.metrics_port)
    from cloud.asr import EngineError
    from cloud.detect import DetectorError
    from runtime.plugins import MissingPackage

    try:  # a missing model or package (mlflow_tracking_uri without the mlflow extra, say): exit 2
        worker = _worker(args.worker, settings)
    except (EngineError, DetectorError, MissingPackage) as exc:
        log.error("%s", exc)
        return 2
    worker.run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
