"""GeminiTeacher and GuidedStudent: the targets file, its fingerprint check, targets from a checkpoint."""

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_dml.data import ClassPairTriplets, Digits, Transforms
from lightning_dml.data.fingerprint import dataset_fingerprint
from lightning_dml.data.transforms import raw_pixel_transform
from lightning_dml.errors import DataError
from lightning_dml.methods import GeminiTeacher, GuidedStudent
from lightning_dml.methods.gdml import (
    TARGETS_FILE,
    load_targets,
    nearest_neighbour_accuracy,
    stream_targets,
)
from lightning_dml.metrics import rank
from lightning_dml.models import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def teacher_data(**kwargs) -> Digits:
    return Digits(
        protocol="closed_set",
        validation=[],
        sampler=ClassPairTriplets(triplets_per_pair=4),
        transforms=Transforms(raw_pixels=True, augment=False),
        **kwargs,
    )


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[GeminiTeacher, Digits, L.Trainer]:
    tmp_path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = GeminiTeacher(10, image_size=8, padding=2, optimizer=partial(torch.optim.SGD, lr=1e-3))
    data = teacher_data()
    run = trainer(tmp_path, limit_train_batches=6)
    run.fit(model, datamodule=data)
    return model, data, run


def student(teacher: str) -> GuidedStudent:
    return GuidedStudent(SmallCNN(1, (8, 16)), teacher, optimizer=partial(torch.optim.SGD, lr=0.1))


def test_targets_file_round_trips_with_the_training_set_fingerprint(teacher_run):
    model, data, run = teacher_run
    content = load_targets(Path(run.log_dir) / TARGETS_FILE)
    assert content["fingerprint"] == dataset_fingerprint(data.train_set)
    assert content["targets"].shape == (len(data.train_set), 2)
    torch.testing.assert_close(content["labels"], data.train_set.labels)
    recomputed = stream_targets(model.network, data.train_set, raw_pixel_transform(data.preprocessing))
    torch.testing.assert_close(content["targets"], recomputed)
    targets, labels = content["targets"].double().numpy(), content["labels"].numpy()
    distances = np.linalg.norm(targets[:, None] - targets[None], axis=-1)
    np.fill_diagonal(distances, np.inf)  # leave-one-out 1-NN, brute force
    accuracy = (labels[distances.argmin(1)] == labels).mean()
    assert float(run.callback_metrics["targets/1nn_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    assert not list(Path(run.log_dir).glob("*.partial"))


def test_student_refuses_targets_of_another_split(teacher_run, tmp_path):
    _, data, run = teacher_run
    other = Digits(protocol="closed_set", validation=[], transforms=Transforms(augment=False), seed=1)
    other.setup()
    with pytest.raises(DataError) as error:
        trainer(tmp_path).fit(student(str(Path(run.log_dir) / TARGETS_FILE)), datamodule=other)
    message = str(error.value)
    assert dataset_fingerprint(data.train_set) in message and dataset_fingerprint(other.train_set) in message
    assert "\n" not in message and "retrain the teacher" in message


def test_student_computes_missing_targets_from_the_teacher_checkpoint(teacher_run, tmp_path):
    _, _, run = teacher_run
    targets_path = Path(run.log_dir) / TARGETS_FILE
    saved = load_targets(targets_path)["targets"]
    targets_path.rename(tmp_path / "kept.pt")
    try:
        checkpoint = next(Path(run.log_dir).glob("checkpoints/*.ckpt"))
        model = student(str(checkpoint))
        data = Digits(protocol="closed_set", validation=[], transforms=Transforms(augment=False))
        trainer(tmp_path, limit_train_batches=2).fit(model, datamodule=data)
        torch.testing.assert_close(model.targets, saved)
        torch.testing.assert_close(load_targets(targets_path)["targets"], saved)
    finally:
        (tmp_path / "kept.pt").replace(targets_path)


def test_teacher_refuses_a_data_module_without_class_pair_triplets(tmp_path):
    model = GeminiTeacher(10, image_size=8, padding=2)
    data = Digits(protocol="closed_set", validation=[], transforms=Transforms(raw_pixels=True))
    with pytest.raises(DataError, match="class-pair triplets"):
        trainer(tmp_path).fit(model, datamodule=data)


def test_a_file_that_is_not_a_targets_file_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a G-DML targets file"):
        load_targets(tmp_path / "other.pt")
    with pytest.raises(DataError, match="run the teacher stage first"):
        load_targets(tmp_path / "missing.pt")


def test_targets_accuracy_equals_the_metric_cores_leave_one_out_recall_at_1_with_ties():
    generator = torch.Generator().manual_seed(0)
    points = torch.randint(0, 4, (300, 2), generator=generator).float()  # a 4 x 4 grid: many exact ties
    labels = torch.randint(0, 3, (300,), generator=generator)
    ranking = rank(points, labels, metric="euclidean")
    expected = float(ranking.recall_at(1).where(ranking.relevant > 0, 0.0).mean())
    # abs: the ranking holds per-query hit rates in float32
    assert nearest_neighbour_accuracy(points, labels) == pytest.approx(expected, abs=1e-7)
    one_dimensional = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [4.0, 0.0], [2.0, 0.0]])
    # x = 0, 1, 4 hit; x = 3 and x = 2 each have two nearest, one of each label: half a hit each
    assert nearest_neighbour_accuracy(one_dimensional, torch.tensor([0, 0, 1, 1, 0])) == pytest.approx(4 / 5)
