"""dala.ood: a real BreakHis field shown to a model trained on SYNTHETIC data is flagged; an
image from the training distribution is not."""

from __future__ import annotations

import numpy as np
import pytest

from dala.ood import FEATURES, ColourReference, colour_features, ood_score, reference_from_images, reference_from_index


@pytest.fixture(scope="module")
def synthetic_reference(tiny_index) -> ColourReference:
    return reference_from_index(tiny_index, n=64, seed=0)


def test_real_breakhis_samples_are_flagged_against_a_synthetic_reference(synthetic_reference, real_samples):
    results = [ood_score(p, synthetic_reference) for p in real_samples]
    assert synthetic_reference.source == "synthetic"
    assert all(r.flagged for r in results), [round(r.score, 1) for r in results]
    assert "does not look like" in results[0].describe()


def test_held_out_synthetic_images_are_not_flagged(synthetic_reference, tmp_path):
    from dala.data.index import load_index
    from dala.data.synth import generate

    other = load_index(generate(tmp_path / "other", seed=7, n_patients=12, images_per_mag=1, size=(96, 64),
                                progress=False))  # other patients, the same generator as the training data
    scores = [ood_score(p, synthetic_reference) for p in other["path"]]
    assert not any(r.flagged for r in scores), max(r.score for r in scores)
    assert "looks like" in scores[0].describe()


def test_features_are_bounded_and_the_reference_round_trips(synthetic_reference, real_samples):
    f = colour_features(real_samples[0])
    assert f.shape == (len(FEATURES),) and np.all(np.isfinite(f))
    same = ColourReference.from_dict(synthetic_reference.to_dict())
    assert ood_score(f, same).score == pytest.approx(ood_score(f, synthetic_reference).score)
    # an array, a PIL image and a path give the same features
    from PIL import Image

    im = Image.open(real_samples[0]).convert("RGB")
    assert np.allclose(colour_features(np.asarray(im)), colour_features(im))
    from dala.errors import DataError

    with pytest.raises(DataError):
        reference_from_images(real_samples[:2])
    # a threshold can be set per call
    assert not ood_score(f, synthetic_reference, threshold=1e9).flagged
