"""Image classification: data (embedded ``digits``, ImageFolder trees), options and recipes, the training
task, training on :func:`sasa.engine.launch`, checkpoint loading, evaluation and prediction."""
from sasa.classification.checkpoint import load_checkpoint
from sasa.classification.data import (
    ClassificationData,
    DigitsDataset,
    build_eval_transform,
    collate_skipping,
    load_classification_data,
    subset,
)
from sasa.classification.evaluate import evaluate_checkpoint
from sasa.classification.options import RECIPES, ClassificationOptions, resolve_options
from sasa.classification.predict import predict_images
from sasa.classification.task import ClassificationTask
from sasa.classification.train import resume, train

__all__ = [
    "RECIPES", "ClassificationData", "ClassificationOptions", "ClassificationTask", "DigitsDataset",
    "build_eval_transform", "collate_skipping", "evaluate_checkpoint", "load_checkpoint", "load_classification_data",
    "predict_images", "resolve_options", "resume", "subset", "train",
]
