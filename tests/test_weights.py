"""Loading weights: local files in our layout or PaddleClas's, URLs served from this machine (cached,
checked), fine-tuning to another class count, and the errors for everything that does not fit."""
import dataclasses

import numpy as np
import paddle
import pytest

import ppcls_ext
from ppcls_ext import registry
from ppcls_ext.paddleclas_plugin import paddleclas_original
from local_server import LocalServer
from ppcls_ext.weights import IncompatibleWeightsError, WeightsDownloadError, download, load_pretrained, randomize_


@pytest.fixture(scope="module")
def m0_reference():
    """PaddleClas's MicroNet_M0 with random weights, and its logits on a fixed input."""
    theirs = paddleclas_original("MicroNet_M0")
    theirs.set_state_dict(randomize_(theirs.state_dict(), seed=3))
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype("float32"))
    return theirs, x, theirs(x).numpy()


def logits(model, x):
    model.eval()
    return model(x).numpy()


def test_paddleclas_and_our_layouts_load_to_the_same_model(m0_reference, tmp_path):
    theirs, x, expected = m0_reference
    paddle.save(theirs.state_dict(), str(tmp_path / "paddleclas.pdparams"))
    from_theirs = ppcls_ext.create_model("MicroNet_M0", pretrained=str(tmp_path / "paddleclas.pdparams"))
    np.testing.assert_allclose(logits(from_theirs, x), expected, atol=1e-5)
    paddle.save(from_theirs.state_dict(), str(tmp_path / "ours.pdparams"))
    # PaddleClas's convention: a path without the .pdparams suffix
    from_ours = ppcls_ext.create_model("MicroNet_M0", pretrained=str(tmp_path / "ours"))
    np.testing.assert_allclose(logits(from_ours, x), expected, atol=1e-5)
    # and our weights exported under PaddleClas's names load into PaddleClas's class
    again = paddleclas_original("MicroNet_M0")
    again.set_state_dict(from_ours.to_paddleclas_state_dict())
    np.testing.assert_allclose(logits(again, x), expected, atol=1e-5)


def test_other_class_count_skips_only_the_classifier(m0_reference, tmp_path, caplog):
    theirs, x, _ = m0_reference
    paddle.save(theirs.state_dict(), str(tmp_path / "w.pdparams"))
    model = ppcls_ext.create_model("MicroNet_M0", class_num=10)
    skipped = load_pretrained(model, tmp_path / "w.pdparams")
    assert sorted(skipped) == sorted(k for k in model.state_dict() if k.startswith("classifier."))
    assert "classifier does not match the model's class_num" in caplog.text
    reference = ppcls_ext.create_model("MicroNet_M0", pretrained=str(tmp_path / "w.pdparams"))
    model.eval(), reference.eval()
    np.testing.assert_allclose(model.forward_features(x).numpy(), reference.forward_features(x).numpy(), atol=1e-6)


def test_weights_of_another_model_are_rejected_by_name(tmp_path):
    paddle.save(ppcls_ext.create_model("MicroNet_M1").state_dict(), str(tmp_path / "m1.pdparams"))
    with pytest.raises(IncompatibleWeightsError) as info:
        ppcls_ext.create_model("MicroNet_M0", pretrained=str(tmp_path / "m1.pdparams"))
    message = str(info.value)
    assert str(tmp_path / "m1.pdparams") in message and "does not fit MicroNet" in message
    assert "wrong shape" in message and "stem.conv.conv_kx1.conv.weight (3, 3, 3, 1) vs (2, 3, 3, 1)" in message


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*nowhere\.pdparams"):
        ppcls_ext.create_model("MicroNet_M0", pretrained=str(tmp_path / "nowhere.pdparams"))
    (tmp_path / "empty.pdparams").write_bytes(b"")
    with pytest.raises(IncompatibleWeightsError, match=r"empty\.pdparams is not a readable Paddle state dict"):
        ppcls_ext.create_model("MicroNet_M0", pretrained=str(tmp_path / "empty.pdparams"))
    paddle.save([1, 2, 3], str(tmp_path / "list.pdparams"))
    with pytest.raises(IncompatibleWeightsError, match=r"list\.pdparams does not hold a state dict"):
        ppcls_ext.create_model("MicroNet_M0", pretrained=str(tmp_path / "list.pdparams"))


@pytest.fixture
def server(m0_reference, tmp_path, monkeypatch):
    """The loopback server, over http: allowed by PPCLS_EXT_ALLOW_HTTP (https is tested in test_downloads)."""
    monkeypatch.setenv("PPCLS_EXT_ALLOW_HTTP", "1")
    theirs, _, _ = m0_reference
    paddle.save(theirs.state_dict(), str(tmp_path / "served.pdparams"))
    body = (tmp_path / "served.pdparams").read_bytes()
    srv = LocalServer({
        "/MicroNet_M0_pretrained.pdparams": (200, body, None),
        "/garbage.pdparams": (200, b"<html>proxy error</html>", None),
        "/truncated.pdparams": (200, body[:1000], len(body)),
    })
    yield srv
    srv.close()


def test_url_is_downloaded_once_into_the_cache(server, m0_reference, tmp_path, monkeypatch):
    monkeypatch.setenv("PPCLS_EXT_HOME", str(tmp_path / "home"))
    _, x, expected = m0_reference
    url = server.url + "/MicroNet_M0_pretrained.pdparams"
    for _ in range(2):
        model = ppcls_ext.create_model("MicroNet_M0", pretrained=url)
        np.testing.assert_allclose(logits(model, x), expected, atol=1e-5)
    assert server.requests == ["/MicroNet_M0_pretrained.pdparams"]
    entries = list((tmp_path / "home" / "weights").iterdir())  # one folder per URL: the file and its pinned digest
    assert len(entries) == 1 and sorted(p.name for p in entries[0].iterdir()) == [
        "MicroNet_M0_pretrained.pdparams", "MicroNet_M0_pretrained.pdparams.sha256"]


def test_pretrained_true_fetches_the_registered_url(server, m0_reference, tmp_path, monkeypatch):
    monkeypatch.setenv("PPCLS_EXT_HOME", str(tmp_path / "home"))
    config = registry._REGISTRY["MicroNet_M0"]
    monkeypatch.setitem(registry._REGISTRY, "MicroNet_M0",
                        dataclasses.replace(config, weights_url=server.url + "/MicroNet_M0_pretrained.pdparams"))
    _, x, expected = m0_reference
    np.testing.assert_allclose(logits(ppcls_ext.create_model("MicroNet_M0", pretrained=True), x), expected, atol=1e-5)


def test_failed_downloads_are_clear_and_leave_nothing_in_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PPCLS_EXT_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "weights"
    with pytest.raises(WeightsDownloadError, match=r"could not download weights from http://127\.0\.0\.1:\d+/missing\.pdparams: HTTP Error 404"):
        ppcls_ext.create_model("MicroNet_M0", pretrained=server.url + "/missing.pdparams")
    with pytest.raises(WeightsDownloadError, match=r"incomplete: 1000 of \d+ bytes"):
        ppcls_ext.create_model("MicroNet_M0", pretrained=server.url + "/truncated.pdparams")
    with pytest.raises(IncompatibleWeightsError, match=r"garbage\.pdparams is not a readable Paddle state dict"):
        ppcls_ext.create_model("MicroNet_M0", pretrained=server.url + "/garbage.pdparams")
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    with pytest.raises(WeightsDownloadError, match="does not match its SHA-256"):
        download(server.url + "/MicroNet_M0_pretrained.pdparams", directory=cache, sha256="0" * 64)
    assert [p for p in cache.rglob("*") if p.is_file()] == []
