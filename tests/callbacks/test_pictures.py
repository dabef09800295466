"""Pictures: 2-D views, retrieval grids, per-query AP, and the callback logging them to TensorBoard."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dml.callbacks import Pictures, RetrievalEvaluation
from lightning_dml.callbacks import plots as plots_module
from lightning_dml.callbacks.plots import (
    CORRECT_COLOUR,
    QUERY_COLOUR,
    WRONG_COLOUR,
    plot_embeddings_2d,
    project_2d,
    retrieval_grid,
    worst_queries,
)
from lightning_dml.cli import DMLCLI
from lightning_dml.data import RetrievalDataset, TensorImages
from lightning_dml.errors import DataError
from lightning_dml.metrics import rank, retrieval_metrics

# The known case of the retrieval_metrics doctest: points on a line, euclidean, leave-one-out.
LINE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0], [8.0, 0.0]])
LINE_LABELS = torch.tensor([0, 1, 0, 1, 1])


def scatter_points(figure) -> dict[str, np.ndarray]:
    """The plotted points of each scatter collection, by its legend label."""
    return {c.get_label(): np.asarray(c.get_offsets()) for c in figure.axes[0].collections}


def test_two_dimensional_embeddings_are_plotted_as_they_are():
    embeddings = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30) % 3
    points, method = project_2d(embeddings)
    assert method == "embedding" and torch.equal(points, embeddings)
    plotted = scatter_points(plot_embeddings_2d(embeddings, labels))
    for label in range(3):
        np.testing.assert_array_equal(plotted[str(label)], embeddings[labels == label].numpy())


def test_higher_dimensions_are_projected_by_pca():
    generator = torch.Generator().manual_seed(0)
    # Variance mostly along two orthogonal directions of a 6-D space.
    basis = torch.linalg.qr(torch.randn(6, 6, generator=generator))[0][:, :2]
    embeddings = torch.randn(50, 2, generator=generator) * torch.tensor([5.0, 2.0]) @ basis.T
    embeddings += 0.01 * torch.randn(50, 6, generator=generator) + 3.0
    points, method = project_2d(embeddings, "pca")
    centred = (embeddings - embeddings.mean(0)).double()
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    reference = (u[:, :2] * s[:2]).float()
    signs = torch.sign((points * reference).sum(0))  # PCA axes are defined up to sign
    assert method == "PCA"
    torch.testing.assert_close(points * signs, reference, atol=1e-4, rtol=1e-4)
    figure = plot_embeddings_2d(embeddings, torch.zeros(50, dtype=torch.long), title="val")
    assert figure.axes[0].get_xlabel() == "PCA 1" and figure.axes[0].get_title() == "val"


def test_auto_falls_back_to_pca_and_umap_without_the_package_is_refused(monkeypatch):
    monkeypatch.setattr(plots_module, "umap_available", lambda: False)
    assert project_2d(torch.randn(10, 4), "auto")[1] == "PCA"
    with pytest.raises(DataError, match="umap-learn"):
        project_2d(torch.randn(10, 4), "umap")
    with pytest.raises(DataError, match="D >= 2"):
        project_2d(torch.randn(10, 1))


def test_each_class_gets_one_colour_of_its_own_and_a_legend_entry():
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    figure = plot_embeddings_2d(torch.randn(6, 3), labels)
    collections = figure.axes[0].collections
    assert [c.get_label() for c in collections] == ["0", "1", "2"]
    assert [len(c.get_offsets()) for c in collections] == [2, 1, 3]
    colours = [tuple(c.get_facecolor()[0]) for c in collections]
    assert all(len(np.unique(c.get_facecolor(), axis=0)) == 1 for c in collections)
    assert len(set(colours)) == 3
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["0", "1", "2"]


def cell_pixels(grid: torch.Tensor, row: int, column: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-left border pixel and the centre pixel of a cell of ``retrieval_grid`` (padding 2)."""
    top, left = 2 + row * (side + 2), 2 + column * (side + 2)
    return grid[:, top, left], grid[:, top + side // 2, left + side // 2]


def test_grid_borders_mark_queries_correct_and_wrong_neighbours():
    queries = torch.full((2, 1, 4, 4), 0.5)
    neighbours = torch.full((2, 2, 1, 4, 4), 0.25)
    correct = torch.tensor([[True, False], [False, True]])
    present = torch.tensor([[True, True], [True, False]])
    grid = retrieval_grid(queries, neighbours, correct, present, border=1)
    side = 4 + 2 * 1
    assert grid.shape == (3, 2 + 2 * (side + 2), 2 + 3 * (side + 2))
    expected = [[QUERY_COLOUR, CORRECT_COLOUR, WRONG_COLOUR], [QUERY_COLOUR, WRONG_COLOUR, None]]
    for row in range(2):
        for column in range(3):
            edge, centre = cell_pixels(grid, row, column, side)
            if expected[row][column] is None:  # an absent neighbour: a blank cell
                assert torch.all(edge == 1) and torch.all(centre == 1)
                continue
            torch.testing.assert_close(edge, torch.tensor(expected[row][column]))
            assert torch.all(centre == (0.5 if column == 0 else 0.25))


def test_grid_resizes_cells_and_refuses_mismatched_shapes():
    grid = retrieval_grid(
        torch.rand(1, 3, 8, 8), torch.rand(1, 2, 3, 8, 8), torch.ones(1, 2, dtype=bool), cell_size=16
    )
    assert grid.shape == (3, 2 + (16 + 4 + 2), 2 + 3 * (16 + 4 + 2))
    with pytest.raises(DataError, match="do not match"):
        retrieval_grid(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 3, 4, 4), torch.ones(1, 2, dtype=bool))


def test_average_precision_per_query_on_a_hand_computed_case():
    # Leave-one-out, euclidean; R = 1, 2, 1, 2, 2; only queries 3 and 4 find a relevant item first.
    ap = rank(LINE, LINE_LABELS, metric="euclidean").average_precision
    torch.testing.assert_close(ap, torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5], dtype=torch.float64))


def test_average_precision_averages_to_map_at_r_and_lone_queries_are_nan():
    generator = torch.Generator().manual_seed(1)
    embeddings, labels = (
        torch.randn(80, 8, generator=generator),
        torch.randint(0, 6, (80,), generator=generator),
    )
    labels[0] = 99  # a lone query
    ap = rank(embeddings, labels).average_precision
    assert ap[0].isnan() and not ap[1:].isnan().any()
    assert float(ap[1:].mean()) == pytest.approx(retrieval_metrics(embeddings, labels)["map@r"], abs=1e-9)


def test_worst_queries_are_the_lowest_ap_first_and_skip_lone_queries():
    ap = torch.tensor([0.5, float("nan"), 0.1, 0.1, 0.9])
    assert worst_queries(ap, 3).tolist() == [2, 3, 0]
    assert worst_queries(ap, 10).tolist() == [2, 3, 0, 4]


def grey_dataset(values: torch.Tensor, labels: torch.Tensor) -> RetrievalDataset:
    """A dataset of 1×4×4 images of constant grey ``values`` (uint8 0-255 -> [0, 1] by the caller)."""
    images = values.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    return RetrievalDataset(TensorImages(images, labels), transform=lambda image: image.float() / 255)


def test_draw_shows_the_worst_query_with_its_neighbours():
    dataset = grey_dataset(torch.tensor([10, 60, 110, 160, 210]), LINE_LABELS)
    outputs = {"embeddings": LINE, "labels": LINE_LABELS, "indices": torch.arange(5)}
    drawn = Pictures(num_queries=5, top_k=2, num_worst=1, cell_size=4)
    pictures = RetrievalEvaluation(metric="euclidean", pictures=drawn).draw(outputs, dataset)
    worst = pictures["worst_queries"]
    side = 4 + 2 * 2  # default border: 2 pixels
    assert worst.shape == (3, 2 + side + 2, 2 + 3 * (side + 2))
    # Query 0 (label 0): nearest are item 1 (label 1, wrong) then item 2 (label 0, right).
    expected = [(QUERY_COLOUR, 10), (WRONG_COLOUR, 60), (CORRECT_COLOUR, 110)]
    for column, (colour, grey) in enumerate(expected):
        edge, centre = cell_pixels(worst, 0, column, side)
        torch.testing.assert_close(edge, torch.tensor(colour))
        torch.testing.assert_close(centre, torch.full((3,), grey / 255))
    assert pictures["retrieval"].shape == (3, 2 + 5 * (side + 2), 2 + 3 * (side + 2))
    assert scatter_points(pictures["embeddings_2d"]).keys() == {"0", "1"}


def test_draw_searches_only_the_gallery_in_query_gallery_sets():
    is_query = torch.tensor([True, False, False, True, False])
    is_gallery = ~is_query
    dataset = grey_dataset(torch.tensor([10, 60, 110, 160, 210]), LINE_LABELS)
    outputs = {
        "embeddings": LINE,
        "labels": LINE_LABELS,
        "indices": torch.arange(5),
        "is_query": is_query,
        "is_gallery": is_gallery,
    }
    drawn = Pictures(top_k=1, num_worst=1, cell_size=4)
    worst = RetrievalEvaluation(metric="euclidean", pictures=drawn).draw(outputs, dataset)["worst_queries"]
    # Query 0's nearest gallery item is item 1 (wrong, grey 60); query 3's is item 4 (right): 0 is worst.
    edge, centre = cell_pixels(worst, 0, 1, 8)
    torch.testing.assert_close(edge, torch.tensor(WRONG_COLOUR))
    torch.testing.assert_close(centre, torch.full((3,), 60 / 255))


def test_every_n_epochs_decides_when_pictures_are_logged(monkeypatch):
    logged = []
    monkeypatch.setattr(
        Pictures,
        "log",
        lambda self, trainer, outputs, rankings, stage: logged.append((trainer.current_epoch, stage)),
    )
    evaluation = RetrievalEvaluation(pictures=Pictures(every_n_epochs=2))
    for epoch in range(4):
        evaluation.on_validation_end(SimpleNamespace(current_epoch=epoch, sanity_checking=False), None)
    evaluation.on_validation_end(SimpleNamespace(current_epoch=1, sanity_checking=True), None)
    evaluation.on_test_end(SimpleNamespace(current_epoch=3), None)
    assert logged == [(1, "validate"), (3, "validate"), (3, "test")]
    for off in (RetrievalEvaluation(pictures=Pictures(every_n_epochs=0)), RetrievalEvaluation(pictures=None)):
        off.on_validation_end(SimpleNamespace(current_epoch=0, sanity_checking=False), None)
        off.on_test_end(SimpleNamespace(current_epoch=0), None)
    assert len(logged) == 3


def test_cli_fit_logs_pictures_and_the_projector_to_tensorboard(quick_args, tmp_path):
    cli = DMLCLI(
        args=[
            "fit",
            *quick_args,
            "--trainer.limit_train_batches",
            "2",
            "--evaluation.pictures.projector_samples",
            "40",
        ]
    )
    log_dir = tmp_path / "runs/quickstart/version_0"
    assert cli.trainer.logger.log_dir == str(log_dir)
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    sets = ["val_seen", "val_test", "test"]
    expected = {
        f"{name}/{picture}" for name in sets for picture in ("retrieval", "worst_queries", "embeddings_2d")
    }
    assert set(events.Tags()["images"]) == expected
    assert {image.step for image in events.Images("val_seen/retrieval")} == {2}
    projector = (log_dir / "projector_config.pbtxt").read_text()
    for name in sets:
        assert f'tensor_name: "{name}:00002"' in projector
        folder = log_dir / "00002" / name
        assert (folder / "sprite.png").is_file()
        assert len((folder / "metadata.tsv").read_text().splitlines()) == 40
        assert len((folder / "tensors.tsv").read_text().splitlines()) == 40


def test_load_images_undoes_the_normalisation_of_float_images_and_scales_uint8_ones():
    from lightning_dml.callbacks.pictures import load_images

    pixels = torch.tensor([[[0, 51], [102, 255]]], dtype=torch.uint8)
    normalised = RetrievalDataset(TensorImages(pixels[None], [0]), transform=lambda x: (x / 255 - 0.5) / 0.25)
    expected = pixels[None] / 255
    torch.testing.assert_close(load_images(normalised, torch.tensor([0]), (0.5,), (0.25,)), expected)
    torch.testing.assert_close(
        load_images(RetrievalDataset(TensorImages(pixels[None], [0])), torch.tensor([0])), expected
    )
