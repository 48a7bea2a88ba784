"""Weight compatibility with PaddleClas's own classes: a state dict saved from PaddleClas's model loads
into ours and gives the same logits; same parameter count and FLOPs."""
import numpy as np
import paddle
import pytest

import ppcls_ext
from conftest import PADDLECLAS_VARIANTS
from ppcls_ext.paddleclas_plugin import paddleclas_original
from ppcls_ext.weights import randomize_


@pytest.fixture(scope="module", params=list(PADDLECLAS_VARIANTS))
def pair(request):
    """(name, PaddleClas's model with random weights, ours loaded from its state dict, nominal size)."""
    name = request.param
    theirs = paddleclas_original(name)
    state = randomize_(theirs.state_dict(), seed=len(name))
    theirs.set_state_dict(state)
    ours = ppcls_ext.create_model(name)
    ppcls_ext.load_weights(ours, state, source=f"PaddleClas {name}")
    ours.eval()
    yield name, theirs, ours, PADDLECLAS_VARIANTS[name]


def test_key_map_is_a_bijection_onto_our_tensors(pair):
    name, theirs, ours, _ = pair
    key_map = ours.paddleclas_key_map()
    their_state, our_state = theirs.state_dict(), ours.state_dict()
    assert set(key_map) == set(their_state)
    assert sorted(key_map.values()) == sorted(our_state)
    for their_key, our_key in key_map.items():
        assert their_state[their_key].shape == our_state[our_key].shape, (their_key, our_key)
    # and back: our weights under PaddleClas's names load into PaddleClas's class
    exported = ours.to_paddleclas_state_dict()
    assert set(exported) == set(their_state)


def test_same_logits_at_the_nominal_size(pair):
    name, theirs, ours, size = pair
    batch = 2 if name.startswith("MicroNet") or name in ("EfficientNetB0", "EfficientNetB1") else 1
    x = paddle.to_tensor(np.random.default_rng(7).standard_normal((batch, 3, size, size)).astype("float32"))
    with paddle.no_grad():
        expected, got = theirs(x).numpy(), ours(x).numpy()
    assert np.abs(expected).max() > 0.1  # random weights give non-trivial logits
    assert np.abs(got - expected).max() <= 1e-5


def count(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


def test_same_parameter_count(pair):
    _, theirs, ours, _ = pair
    assert count(ours) == count(theirs)


def test_flops_within_two_percent(pair):
    name, theirs, ours, size = pair
    theirs_flops = paddle.flops(theirs, [1, 3, size, size])
    ours_flops = paddle.flops(ours, [1, 3, size, size])
    assert ours_flops == pytest.approx(theirs_flops, rel=0.02), name


def test_paddleclas_cannot_build_two_efficientnets_in_one_process():
    """What our models fix: PaddleClas's EfficientNet uses fixed ParamAttr names."""
    from paddleclas.ppcls.arch.backbone.model_zoo import efficientnet

    with paddle.utils.unique_name.guard():
        efficientnet.EfficientNetB0()
        with pytest.raises(ValueError, match="have be been used"):
            efficientnet.EfficientNetB0()
    assert len({id(ppcls_ext.create_model("EfficientNetB0")) for _ in range(2)}) == 2
