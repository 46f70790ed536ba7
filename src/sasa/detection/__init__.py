"""RetinaNet detection with attention backbones and heads (paper §4.2, SPEC §6)."""
from sasa.detection.config import DETECTOR_CONFIGS, DetectorConfig
from sasa.detection.model import create_detector, list_detectors, profile_detector, resolve_detector_config

__all__ = [
    "DETECTOR_CONFIGS", "DetectorConfig", "create_detector", "list_detectors", "profile_detector",
    "resolve_detector_config",
]
