"""Real models on real digits: the trigger stays quiet in distribution, fires on harmful shifts,
and fine-tuning with replay recovers rotated accuracy without forgetting the source."""

import numpy as np
import pytest

from datacenter.adaptation import finetune
from datacenter.detectors import ks_softmax_test, mmd_permutation_test
from datacenter.state import StateStore
from mlcore.checkpoints import load_checkpoint
from mlcore.rounds import parse_round
from mlcore.shifts import apply_image_shifts, parse_shift_list
from mlcore.stream import draw_round_batch
from mlcore.training import accuracy, predict_proba


@pytest.fixture(scope="module")
def base(trained):
    state_dir, result = trained
    model, _ = load_checkpoint(result["checkpoint"], result["sha256"])
    snapshot = StateStore(state_dir).load(result["state"])
    return model, snapshot.reference(result["sha256"])


def sample_probs(model, digits, splits, round_id, shift, n=100):
    spec = parse_round({"id": round_id, "shift": shift})
    batch = draw_round_batch(digits, splits, spec, 0, n)
    return predict_proba(model, batch.images)


def test_no_trigger_in_distribution(base, digits, splits):
    model, reference = base
    verdicts = [ks_softmax_test(reference, sample_probs(model, digits, splits, f"s{i:02d}", []), 0.01) for i in range(10)]
    assert sum(v.drift for v in verdicts) == 0
    assert all(v.p_value > 0.01 for v in verdicts)


@pytest.mark.parametrize("shift", [[{"name": "rotate", "degrees": 15}], [{"name": "invert"}],
                                   [{"name": "rotate", "degrees": 15}, {"name": "thicker"}]])
def test_trigger_on_harmful_shifts(base, digits, splits, shift):
    model, reference = base
    for i in range(3):
        verdict = ks_softmax_test(reference, sample_probs(model, digits, splits, f"h{i}", shift), 0.01)
        assert verdict.drift and verdict.p_value < 0.01


def test_mmd_also_separates(base, digits, splits):
    model, reference = base
    rng = np.random.default_rng(0)
    quiet = mmd_permutation_test(reference, sample_probs(model, digits, splits, "m0", []), 0.01, 100, rng)
    loud = mmd_permutation_test(reference, sample_probs(model, digits, splits, "m1", [{"name": "invert"}]), 0.01, 100, rng)
    assert not quiet.drift and loud.drift


def test_finetuning_on_rotated_data_recovers_without_forgetting(base, digits, splits, settings):
    model, _ = base
    rotate = parse_shift_list([{"name": "rotate", "degrees": 30}])
    train_rows = splits.stream[:80]
    train_x = apply_image_shifts(digits.images[train_rows], rotate, np.random.default_rng(0))
    held = splits.evaluation
    held_rot = apply_image_shifts(digits.images[held], rotate, np.random.default_rng(1))
    before_rot = accuracy(model, held_rot, digits.labels[held])
    before_src = accuracy(model, digits.images[held], digits.labels[held])
    tuned = finetune(model, train_x.reshape(80, -1), digits.labels[train_rows], digits, splits,
                     settings.datacenter.finetune, settings.seed, "test-episode")
    after_rot = accuracy(tuned, held_rot, digits.labels[held])
    after_src = accuracy(tuned, digits.images[held], digits.labels[held])
    assert after_rot > before_rot + 0.15
    assert after_src > before_src - 0.03
    # the start model is not modified in place
    assert accuracy(model, held_rot, digits.labels[held]) == before_rot
