"""Bounds on the work one model input may cost, in one place (checkpoints, training, predict).

Import-light (no torch): the training config check and the CLI read these too.
"""

from __future__ import annotations

from typing import Any

MIN_INPUT_SIZE = 16     # px: below this the deepest stage of every registry model has no pixels left
MAX_INPUT_SIZE = 1024   # px: a 1024 px ResNet50 forward + Grad-CAM fits a few GB; 60000 px would need 10+ GB
MAX_CLASSES = 1000      # outputs a checkpoint may declare


def input_size_problem(value: Any, *, field: str = "input_size") -> str | None:
    """Why ``value`` is not an allowed square input side (in px), or None when it is."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{field} must be a whole number of pixels, got {value!r}"
    if not MIN_INPUT_SIZE <= value <= MAX_INPUT_SIZE:
        return (f"{field} {value} is outside the allowed range {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} px "
                "(bounded so one image cannot exhaust memory)")
    return None
