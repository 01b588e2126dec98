"""The embedded default dataset: a BreakHis-like synthetic histopathology set.

The real BreakHis images cannot ship with the app and the lab machines cannot download them, so
the app starts on images generated here, written in the exact BreakHis folder layout and file
naming so one loader (:mod:`dala.data.index`) serves both. It is a teaching stand-in, labelled
synthetic everywhere (the ``SYNTHETIC`` marker file at the dataset root), never real tissue.

How an image is made (see ``docs/synthetic.md``):

* **Stain physics, not RGB painting.** Each field is rendered as two concentration maps, for
  haematoxylin (nuclei, mucin) and eosin (stroma, cytoplasm), and turned into colour with the
  Beer-Lambert law ``RGB = I0 * exp(-(cH * vH + cE * vE))`` using the Ruifrok-Johnston H&E
  optical-density vectors.
* **A per-patient signature** (stain vectors rotated a little, stain strengths, background
  brightness and tint, focus blur, fibre texture, amount of empty space) drawn from one
  distribution for both classes. An image-level split lets a model recognise patients by it.
* **The class signal is morphology only**: malignant fields hold a lesion region (25-60 % of the
  field, its mask written beside the image) of large, pleomorphic, hyperchromatic, crowded
  nuclei in a subtype-specific architecture; benign fields hold no atypical cells. Each image's
  per-channel mean and standard deviation are then matched to targets that depend on the patient
  and magnification only, so global colour statistics carry no class information.
* ``difficulty`` in [0, 1] shrinks the nuclear size / pleomorphism / darkness / crowding gap.
* Magnification scales everything: at 40X many small structures, at 400X a few large nuclei.

Every image has its own seed derived from ``(seed, patient, magnification, seq)``, and PNGs are
written with fixed settings, so a seed gives the same bytes on every run.

The modules, each owning one part (this package is their public face: import from here):

* :mod:`~dala.data.synth.patients`: the subtype table, patient plan, BreakHis names;
* :mod:`~dala.data.synth.texture`: noise, fibres, warps, blobs, point grids;
* :mod:`~dala.data.synth.tissue`: the label map, nuclei, and each subtype's architecture;
* :mod:`~dala.data.synth.stain_physics`: H&E vectors, patient signature, Beer-Lambert colour;
* :mod:`~dala.data.synth.render`: one image, its lesion mask and its colour matching;
* :mod:`~dala.data.synth.writer`: parameters, the dataset writer and its markers, the cached default.
"""

from __future__ import annotations

from dala.data.index import PNG_MARKER_KEY
from dala.data.synth.patients import Patient, plan_patients
from dala.data.synth.render import _finish, _reference_stats, render_image  # noqa: F401
from dala.data.synth.stain_physics import Signature, patient_signature
from dala.data.synth.tissue import _malignant_nuclei  # noqa: F401
from dala.data.synth.writer import (
    DEFAULT_PARAMS,
    GENERATOR_VERSION,
    PNG_MARKER_TEXT,  # noqa: F401
    ProgressArg,  # noqa: F401
    SynthArgumentError,
    check_params,
    ensure_default_dataset,
    generate,
)

__all__ = ["DEFAULT_PARAMS", "GENERATOR_VERSION", "PNG_MARKER_KEY", "Patient", "Signature", "SynthArgumentError",
           "check_params", "ensure_default_dataset", "generate", "patient_signature", "plan_patients", "render_image"]

# also importable from here, though not in __all__: PNG_MARKER_TEXT and ProgressArg (for callers'
# type hints), and the internals docs/make_contact_sheet.py and the tests reach (_reference_stats
# and _finish render a contact sheet exactly as the writer does; _malignant_nuclei is the
# difficulty knob the tests check)
