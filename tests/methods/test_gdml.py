"""G-DML: the targets file, the one hand-over of the targets (file or checkpoint, fingerprint checked once),
the teacher's label-conditioned evaluation."""

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_dml.callbacks import RetrievalEvaluation
from lightning_dml.data import ClassPairTriplets, Digits, Transforms
from lightning_dml.data.fingerprint import dataset_fingerprint
from lightning_dml.errors import DataError
from lightning_dml.methods import GeminiTeacher, GuidedStudent
from lightning_dml.methods.gdml import (
    TARGETS_FILE,
    nearest_neighbour_accuracy,
    teacher_targets,
    training_set_targets,
)
from lightning_dml.metrics import rank
from lightning_dml.models import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def teacher_data(**kwargs) -> Digits:
    options = {"protocol": "closed_set", "validation": []} | kwargs
    return Digits(
        sampler=ClassPairTriplets(triplets_per_pair=4),
        transforms=Transforms(raw_pixels=True, augment=False),
        **options,
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


def saved_targets(run: L.Trainer) -> dict:
    return torch.load(Path(run.log_dir) / TARGETS_FILE, weights_only=True)


def test_targets_file_round_trips_with_the_training_set_fingerprint(teacher_run):
    model, data, run = teacher_run
    content = saved_targets(run)
    assert content["fingerprint"] == dataset_fingerprint(data.train_set)
    assert content["targets"].shape == (len(data.train_set), 2)
    torch.testing.assert_close(content["labels"], data.train_set.labels)
    torch.testing.assert_close(content["targets"], training_set_targets(model.network, data, raw_pixels=True))
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


def test_student_computes_the_targets_from_the_teacher_checkpoint_without_writing_any(teacher_run, tmp_path):
    _, _, run = teacher_run
    before = sorted(Path(run.log_dir).rglob("*"))
    checkpoint = next(Path(run.log_dir).glob("checkpoints/*.ckpt"))
    model = student(str(checkpoint))
    data = Digits(protocol="closed_set", validation=[], transforms=Transforms(augment=False))
    trainer(tmp_path, limit_train_batches=2).fit(model, datamodule=data)
    torch.testing.assert_close(model.targets, saved_targets(run)["targets"])
    assert sorted(Path(run.log_dir).rglob("*")) == before  # nothing written beside the teacher's run


@pytest.mark.parametrize("source", ["targets", "checkpoint"])
def test_the_hand_over_refuses_another_training_set_in_one_line(teacher_run, source):
    _, data, run = teacher_run
    path = Path(run.log_dir) / TARGETS_FILE
    path = path if source == "targets" else next(Path(run.log_dir).glob("checkpoints/*.ckpt"))
    other = Digits(protocol="closed_set", validation=[], transforms=Transforms(augment=False), seed=1)
    other.setup()
    with pytest.raises(DataError) as error:
        teacher_targets(path, other)
    message = str(error.value)
    assert str(path) in message and dataset_fingerprint(other.train_set) in message
    assert dataset_fingerprint(data.train_set) in message and "\n" not in message


def test_the_hand_over_refuses_a_missing_file_and_a_file_of_another_kind_in_one_line(teacher_run, tmp_path):
    _, data, _ = teacher_run
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    (tmp_path / "run").mkdir()
    for name in ("other.pt", "text.pt", "run"):
        with pytest.raises(DataError, match="neither a G-DML targets file nor a GeminiTeacher checkpoint"):
            teacher_targets(tmp_path / name, data)
    with pytest.raises(DataError, match="teacher file not found") as error:
        teacher_targets(tmp_path / "missing.pt", data)
    assert "\n" not in str(error.value) and "targets.pt" in str(error.value)


def test_teacher_refuses_a_data_module_without_class_pair_triplets(tmp_path):
    model = GeminiTeacher(10, image_size=8, padding=2)
    data = Digits(protocol="closed_set", validation=[], transforms=Transforms(raw_pixels=True))
    with pytest.raises(DataError, match="class-pair triplets"):
        trainer(tmp_path).fit(model, datamodule=data)


def test_the_teacher_is_tested_label_conditioned_its_gallery_being_its_targets(teacher_run, tmp_path):
    model, _, run = teacher_run
    evaluation = RetrievalEvaluation(metric="euclidean", clustering=False)
    data = teacher_data(test_gallery="training_images")
    checkpoint = next(Path(run.log_dir).glob("checkpoints/*.ckpt"))
    tester = trainer(tmp_path, callbacks=[evaluation])
    tester.test(model, datamodule=data, ckpt_path=checkpoint, weights_only=True, verbose=False)
    assert {"test/recall@1", "test/map@r"} <= set(tester.callback_metrics)
    outputs = evaluation.last_outputs["test"]
    gallery = outputs["is_gallery"].bool()
    torch.testing.assert_close(outputs["embeddings"][gallery], saved_targets(run)["targets"])
    queries = torch.stack([data.test_set[int(i)]["image"] for i in outputs["indices"][~gallery]])
    streams = outputs["labels"][~gallery]  # digits: class id i trains stream i
    torch.testing.assert_close(outputs["embeddings"][~gallery], model.network(queries, streams)[0])


def test_a_zero_shot_teacher_maps_class_ids_to_its_streams_and_refuses_unseen_classes(tmp_path):
    torch.manual_seed(0)
    model = GeminiTeacher(5, image_size=8, padding=2, optimizer=partial(torch.optim.SGD, lr=1e-3))
    data = teacher_data(protocol="zero_shot", train_classes=[3, 4, 5, 6, 7], validation=["seen"])
    evaluation = RetrievalEvaluation(metric="euclidean", clustering=False)
    run = trainer(tmp_path, callbacks=[evaluation], limit_train_batches=2, num_sanity_val_steps=0)
    run.fit(model, datamodule=data)
    assert model.stream_classes.tolist() == [3, 4, 5, 6, 7]
    seen = evaluation.last_outputs["val"]
    images = torch.stack([data.val_sets["val"][int(i)]["image"] for i in seen["indices"]])
    torch.testing.assert_close(seen["embeddings"], model.network(images, seen["labels"] - 3)[0])
    checkpoint = next(Path(run.log_dir).glob("checkpoints/*.ckpt"))
    assert torch.load(checkpoint, weights_only=True)["gemini"]["stream_classes"] == [3, 4, 5, 6, 7]
    with pytest.raises(DataError) as error:
        fresh = GeminiTeacher(5, image_size=8, padding=2)  # the checkpoint restores its streams' classes
        trainer(tmp_path).test(fresh, datamodule=data, ckpt_path=checkpoint, weights_only=True)
    message = str(error.value)
    assert "[0, 1, 2, 8, 9]" in message and "test_after_fit: false" in message and "\n" not in message


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
