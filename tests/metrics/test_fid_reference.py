"""The target-matched FID reference: ground truth with the guided attributes at the target."""

import numpy as np

from audit.metrics.fid import fid_between, reference_images, target_reference_images
from audit.zoo.labelers import SynthFacesLabeler


def test_target_world_has_the_target_joint_distribution_and_the_world_elsewhere():
    labeler = SynthFacesLabeler("synthfaces-eval")
    images = target_reference_images("synthfaces:biased", ["skin_tone", "eyeglasses"], [0.1, 0.2, 0.3, 0.4], 400)
    labels = labeler.label(images)
    joint = labels.hard("skin_tone") * 2 + labels.hard("eyeglasses")
    assert np.abs(np.bincount(joint, minlength=4) / 400 - [0.1, 0.2, 0.3, 0.4]).max() <= 0.01
    assert abs(labels.hard("hair_length").mean() - 0.7) < 0.07  # unguided attributes keep the world's marginals


def test_target_reference_does_not_charge_for_the_requested_shift():
    """Balanced ground truth is far from the biased world (the shift) but close to its target world."""
    balanced = target_reference_images("synthfaces:biased", ["skin_tone"], [0.5, 0.5], 600)
    other = target_reference_images("synthfaces:biased", ["skin_tone"], [0.5, 0.5], 1200)[600:]
    biased = reference_images("synthfaces:biased", 600)
    assert fid_between(biased, balanced, "synthfaces") > 3 * fid_between(other, balanced, "synthfaces")
