"""The detector engines on the real YOLOv3-tiny weights and real photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from photos import MIN_IOU, PHOTOS, expected_box, iou, load

from cloud.detect import DETECTORS, Crop, DetectorError, DetectSettings, create_detector
from cloud.detect.base import Detector

pytestmark = pytest.mark.models
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def detector_dir(models_dir: Path) -> Path:
    path = models_dir / "yolov3-tiny"
    if not (path / "onnx" / "model.json").is_file():
        pytest.skip(f"no detector in {path}: run `edgecap models prepare --detector yolov3-tiny`")
    return path


@pytest.fixture(scope="module", params=["onnx", "opencv"])
def detector(request: pytest.FixtureRequest, detector_dir: Path) -> Detector:
    return create_detector(DetectSettings(engine=request.param, model_dir=detector_dir, threads=2))


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_each_photograph_s_object_is_found_where_it_is(detector: Detector, name: str) -> None:
    image = load(name)
    boxes = detector.detect([Crop(image)])[0]
    label = PHOTOS[name][0]
    mine = [b for b in boxes if b.label == label]
    assert mine, f"no {label} in {name}: {boxes}"
    best = max(iou((b.x1, b.y1, b.x2, b.y2), expected_box(name, image.shape[1], image.shape[0])) for b in mine)
    assert best >= MIN_IOU, (name, mine)
    assert all(0 <= b.x1 < b.x2 <= image.shape[1] and 0 <= b.y1 < b.y2 <= image.shape[0] for b in boxes)
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)


def test_the_two_engines_agree(detector_dir: Path) -> None:
    engines = [create_detector(DetectSettings(engine=e, model_dir=detector_dir, threads=2)) for e in ("onnx", "opencv")]
    crops = [Crop(load(name)) for name in sorted(PHOTOS)]
    ours, theirs = (e.detect(crops) for e in engines)
    for a, b in zip(ours, theirs, strict=True):
        assert [x.label for x in a] == [x.label for x in b]
        assert all(x.iou(y) > 0.99 and abs(x.score - y.score) < 1e-3 for x, y in zip(a, b, strict=True))
    assert engines[0].model_id.startswith("yolov3-tiny@onnx-darknet:")
    assert engines[1].model_id.startswith("yolov3-tiny@opencv:")


def test_a_batch_gives_what_each_frame_gives_alone(detector_dir: Path) -> None:
    detector = create_detector(DetectSettings(model_dir=detector_dir, threads=2, max_batch=3))
    crops = [Crop(load(name)) for name in sorted(PHOTOS)]
    together = detector.detect(crops)  # batches of 3 and 2
    for crop, boxes in zip(crops, together, strict=True):
        alone = detector.detect([crop])[0]
        assert [(b.label, round(b.score, 4)) for b in boxes] == [(b.label, round(b.score, 4)) for b in alone]


def test_a_crop_s_boxes_land_where_the_crop_lies_in_its_frame(detector_dir: Path) -> None:
    detector = create_detector(DetectSettings(model_dir=detector_dir, threads=2))
    cup = load("coffee.png")
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    x, y = 1100, 500
    frame[y : y + cup.shape[0], x : x + cup.shape[1]] = cup
    alone = [b for b in detector.detect([Crop(cup)])[0] if b.label == "cup"][0]
    region = frame[y - 20 : y + cup.shape[0] + 20, x - 40 : x + cup.shape[1] + 40]
    found = detector.detect([Crop(region, x - 40, y - 20, frame.shape[1], frame.shape[0])])[0]
    in_frame = [b for b in found if b.label == "cup"][0]
    moved = (alone.x1 + x, alone.y1 + y, alone.x2 + x, alone.y2 + y)
    assert iou((in_frame.x1, in_frame.y1, in_frame.x2, in_frame.y2), moved) > 0.8


def test_per_class_thresholds(detector_dir: Path) -> None:
    image = load("motorcycle_left.png")
    everything = create_detector(DetectSettings(model_dir=detector_dir, threads=2, threshold=0.1)).detect(
        [Crop(image)]
    )[0]
    strict = DetectSettings(model_dir=detector_dir, threads=2, threshold=0.1, thresholds={"motorbike": 0.99})
    others = create_detector(strict).detect([Crop(image)])[0]
    assert any(b.label == "motorbike" for b in everything)
    assert not any(b.label == "motorbike" for b in others)
    assert [b for b in everything if b.label != "motorbike"] == others


def test_a_missing_model_says_how_to_prepare_it(tmp_path: Path) -> None:
    for engine in DETECTORS:
        with pytest.raises(DetectorError, match="edgecap models prepare"):
            create_detector(DetectSettings(engine=engine, model_dir=tmp_path))


def test_settings_refuse_an_unknown_engine_and_bad_thresholds() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown detector 'yolo'; known: onnx, opencv"):
        DetectSettings(engine="yolo")
    with pytest.raises(ValidationError, match=r"\(0, 1\]"):
        DetectSettings(thresholds={"cat": 1.5})
    with pytest.raises(ValidationError, match="multiple of 32"):
        DetectSettings(input_sizes=[288, 300])
