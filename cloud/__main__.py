"""``edgecap worker transcribe|reconcile|detect`` (also ``python -m cloud …``): run one cloud worker."""

from __future__ import annotations

import argparse
import logging

from cloud.metrics import serve
from cloud.settings import WorkerSettings
from runtime.service import add_common_options, prepare, stop_on_signals

log = logging.getLogger(__name__)

WORKERS = {
    "transcribe": "transcribe segments with Whisper (consumer group edgecap-transcribe)",
    "reconcile": "merge drafts and transcripts into final captions (consumer group edgecap-reconcile)",
    "detect": "find objects in camera frames (consumer group edgecap-detect)",
}


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
    if args.worker == "transcribe":
        from cloud.asr import EngineError
        from cloud.transcribe import TranscribeWorker
        from runtime.plugins import MissingPackage

        try:
            worker = TranscribeWorker(settings)
        except (EngineError, MissingPackage) as exc:
            log.error("%s", exc)
            return 2
        worker.run(stop)
    elif args.worker == "detect":
        from cloud.detect import DetectorError
        from cloud.detect.worker import DetectWorker
        from runtime.plugins import MissingPackage

        try:
            detector = DetectWorker(settings)
        except (DetectorError, MissingPackage) as exc:
            log.error("%s", exc)
            return 2
        detector.run(stop)
    else:
        from cloud.reconcile import Reconciler
        from runtime.plugins import MissingPackage

        try:
            reconciler = Reconciler(settings)
        except MissingPackage as exc:  # mlflow_tracking_uri set without the mlflow extra
            log.error("%s", exc)
            return 2
        reconciler.run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
