"""One LightningModule per approach, on a shared base that evaluates and predicts the same way for all."""

from lightning_dml.methods.base import RetrievalModule
from lightning_dml.methods.deml import DeML
from lightning_dml.methods.gdml import GeminiTeacher, GuidedStudent
from lightning_dml.methods.metric_learning import MetricLearning

__all__ = ["DeML", "GeminiTeacher", "GuidedStudent", "MetricLearning", "RetrievalModule"]
