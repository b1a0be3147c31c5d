"""Cloud worker processes with stand-in transcription engines, for the tests that kill workers.

Run as ``python -m cloud_procs transcribe|reconcile [--die-after-finals N]`` with ``tests/`` on
``PYTHONPATH`` (:func:`cloud_worker` makes such a process; run as a script, ``tests/contracts/``
would shadow the package): it registers the engines below and then runs ``edgecap worker``
(:func:`cloud.__main__.main`) exactly as production does, configured by the same environment
variables. Whisper itself cannot go through
10,000 segments and a dozen restarts in a test's time on two cores, and a process-killing bug cannot
be had on demand, so these engines stand in for it (subclassing the real interface):

- ``echo-test``: a transcript made from the audio's length, at once;
- ``killer-test``: the same, but the process kills itself (SIGKILL, as a segfault or the OOM killer
  would) when a batch holds a segment of exactly ``POISON_SAMPLES`` samples;
- ``slow-test``: the same as ``echo-test``, but each batch takes ``SLOW_BATCH_S`` and says on stderr
  when it starts (``slow-test: batch of N``), so a test can signal the process mid-batch.

``--die-after-finals N`` makes the reconciler SIGKILL itself right after the store committed its
N-th final and before that final is produced to Kafka: the crash between the two writes.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from agents_sim import Service
from support import service_env

from cloud.asr import ENGINES, TranscriptionEngine
from cloud.settings import WorkerSettings
from contracts import Transcript

POISON_SAMPLES = 4321  # a segment of exactly this length kills the killer-test engine's process
SLOW_BATCH_S = 3.0  # how long the slow-test engine takes per batch


class EchoEngine(TranscriptionEngine):
    """Says how long each segment is; never fails."""

    type_key = "echo-test"
    model_id = "echo-test"

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        now = time.time()
        return [
            Transcript(text=f"cloud text of {a.size} samples", model_id=self.model_id, produced_at=now) for a in audios
        ]


class KillerEngine(EchoEngine):
    """Kills its own process on a poison segment (``POISON_SAMPLES`` long)."""

    type_key = "killer-test"
    model_id = "killer-test"

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        if any(a.size == POISON_SAMPLES for a in audios):
            print(f"killer-test: poison in a batch of {len(audios)}: SIGKILL", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().transcribe_batch(audios)


class SlowEngine(EchoEngine):
    """Takes ``SLOW_BATCH_S`` per batch, announcing each on stderr as it starts."""

    type_key = "slow-test"
    model_id = "slow-test"

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[Transcript]:
        print(f"slow-test: batch of {len(audios)}", file=sys.stderr, flush=True)
        time.sleep(SLOW_BATCH_S)  # a signal's handler runs meanwhile; the sleep then goes on (PEP 475)
        return super().transcribe_batch(audios)


def die_after_finals(n: int) -> None:
    """SIGKILL this process once the store has committed its ``n``-th final (before it is sent)."""
    from cloud.store import Store

    record_final = Store.record_final
    stored = 0

    def patched(self: Store, *args: Any, **kwargs: Any) -> Any:
        nonlocal stored
        final = record_final(self, *args, **kwargs)
        if final is not None:
            stored += 1
            if stored == n:
                print(f"final {final.segment_id} stored, not sent: SIGKILL", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        return final

    Store.record_final = patched  # type: ignore[method-assign]


def cloud_worker(
    worker: str, settings: WorkerSettings, workdir: Path, *flags: str, engine: str | None = None
) -> Service:
    """A cloud worker process (``transcribe`` or ``reconcile``), not started; ``engine`` names one
    of the engines above (given apart: this process's settings know only the product's engines)."""
    env = service_env(settings) | {"PYTHONPATH": str(Path(__file__).resolve().parent)}
    if engine is not None:
        env["EDGECAP_WORKER_ENGINE"] = engine
    return Service(worker, ["-m", "cloud_procs", worker, *flags], env, workdir / f"{worker}.log")


def main(argv: list[str]) -> int:
    from cloud.__main__ import main as worker_main

    # registered only in the worker process: the test session's registry stays the product's
    ENGINES.register(EchoEngine)
    ENGINES.register(KillerEngine)
    ENGINES.register(SlowEngine)
    if "--die-after-finals" in argv:
        at = argv.index("--die-after-finals")
        die_after_finals(int(argv[at + 1]))
        argv = argv[:at] + argv[at + 2 :]
    return worker_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
