"""Development tools: local brokers (mosquitto, Tansu, an S3 endpoint), a speech generator, WER, and
the bundled sample recording. The demo, the tests and the benchmarks use them; no service does."""

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
"""The bundled recording (``sample.wav``) with its reference text (``.txt``) and utterance spans (``.json``)."""
