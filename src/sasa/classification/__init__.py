"""Image classification: data (embedded ``digits``, ImageFolder trees) and the training task."""
from sasa.classification.data import (
    ClassificationData,
    DigitsDataset,
    build_eval_transform,
    collate_skipping,
    load_classification_data,
    subset,
)
from sasa.classification.task import ClassificationTask

__all__ = [
    "ClassificationData", "ClassificationTask", "DigitsDataset", "build_eval_transform", "collate_skipping",
    "load_classification_data", "subset",
]
