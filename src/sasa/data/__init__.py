"""Classification datasets (embedded ``digits``, ImageFolder trees) and their preprocessing."""
from sasa.data.classification import (
    ClassificationData,
    DigitsDataset,
    build_eval_transform,
    collate_skipping,
    load_classification_data,
    subset,
)

__all__ = [
    "ClassificationData", "DigitsDataset", "build_eval_transform", "collate_skipping", "load_classification_data",
    "subset",
]
