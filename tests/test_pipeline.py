"""The pipeline's handling of learned triggers: fitted once with a context, cached, restored."""
from __future__ import annotations

import pytest
import torch

from ngfkit.attacks import ATTACKS, Attack
from ngfkit.data import FASHION_MNIST, ImageTensorDataset
from ngfkit.pipeline import Experiment, Splits, fit_trigger


class MeanImageTrigger(Attack):
    """A learned trigger for tests: the mean training image, plus a per-index poison state."""

    name = "mean-image-test"
    learned = True
    fits = 0

    def build_trigger(self, generator):
        return {"pattern": torch.zeros(self.image_shape)}

    def apply(self, x):
        return (x + self.trigger["pattern"].to(x)).clamp(0, 1)

    def fit_trigger(self, context):
        type(self).fits += 1
        x, _ = context.train.get_batch(torch.arange(len(context.train)))
        self.trigger["pattern"] = x.mean(0)
        self.poison_state = {"indices": torch.arange(3)}


@pytest.fixture
def registered(monkeypatch, tmp_path):
    monkeypatch.setitem(ATTACKS._entries, MeanImageTrigger.name, MeanImageTrigger)
    monkeypatch.setenv("NGFKIT_CACHE", str(tmp_path))
    MeanImageTrigger.fits = 0
    return tmp_path


def test_learned_trigger_is_fitted_once_then_restored_from_the_cache(registered):
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    train = ImageTensorDataset(images, torch.arange(64) % 10, FASHION_MNIST)
    splits = Splits(train, train, train)
    exp = Experiment(attack=MeanImageTrigger.name)
    first = exp.make_attack()
    seconds = fit_trigger(exp, first, splits)
    assert MeanImageTrigger.fits == 1 and seconds >= 0
    assert torch.allclose(first.trigger["pattern"], images.float().div(255).mean(0))

    second = exp.make_attack()
    assert not torch.equal(second.trigger["pattern"], first.trigger["pattern"])  # fresh: untrained
    fit_trigger(exp, second, splits)
    assert MeanImageTrigger.fits == 1  # from the cache, not fitted again
    assert torch.equal(second.trigger["pattern"], first.trigger["pattern"])
    assert torch.equal(second.poison_state["indices"], torch.arange(3))
    assert list((registered / "triggers").glob("*.json")), "the trigger's provenance is recorded beside it"

    other_seed = Experiment(attack=MeanImageTrigger.name, seed=1)
    fit_trigger(other_seed, other_seed.make_attack(), splits)
    assert MeanImageTrigger.fits == 2  # a different experiment has its own trigger


def test_cache_key_follows_the_attacks_resolved_parameters(monkeypatch):
    blend = ATTACKS.get("blend")
    default = Experiment(attack="blend").key()
    assert Experiment(attack="blend", attack_params={"alpha": blend.defaults["alpha"]}).key() == default
    assert Experiment(attack="blend", attack_params={"alpha": 0.3}).key() != default
    monkeypatch.setattr(blend, "defaults", {"alpha": 0.25})  # a changed default must not reuse old models
    assert Experiment(attack="blend").key() != default
    assert Experiment(attack=None).key() == Experiment(attack=None).key()
