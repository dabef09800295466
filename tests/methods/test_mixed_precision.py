"""Mixed precision and channels-last, as the GPU recipes run (bf16 autocast is also available on CPU)."""

import torch
from pytorch_metric_learning.losses import MultiSimilarityLoss

from lightning_dml.cli import DMLCLI
from lightning_dml.methods import DeML, MetricLearning
from lightning_dml.models import SmallCNN, SplitSmallCNN
from tests.conftest import DEML_DIGITS, quick_cli_args


def test_bf16_autocast_keeps_the_embeddings_float32_and_close_to_full_precision():
    torch.manual_seed(0)
    model = MetricLearning(SmallCNN(in_channels=1), embedding_size=16, loss=MultiSimilarityLoss()).eval()
    images = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        full = model.embed(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.embed(images)
    assert mixed.dtype == torch.float32
    # bf16 keeps 8 significant bits in the backbone: unit embeddings agree to about 1e-2
    torch.testing.assert_close(mixed, full, atol=3e-2, rtol=0)


def test_bf16_autocast_keeps_deml_embeddings_and_pooled_features_float32():
    torch.manual_seed(0)
    model = DeML(SplitSmallCNN(in_channels=1, pooled_blocks=2), streams=2, learners=2, embedding_size=8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model.network(torch.randn(4, 1, 28, 28), with_attention=True)
    assert output.embeddings.dtype == output.pooled.dtype == output.maps.dtype == torch.float32


def test_channels_last_stores_the_weights_channels_last_and_embeds_as_before(tmp_path):
    args = [*quick_cli_args(tmp_path, *DEML_DIGITS), "--model.init_args.channels_last", "true"]
    cli = DMLCLI(args=args, run=False)
    model = cli.model
    images = torch.randn(4, 1, 8, 8)
    before = model.eval().embed(images)
    model.configure_model()  # what the trainer calls at setup
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    torch.testing.assert_close(model.embed(images), before)
