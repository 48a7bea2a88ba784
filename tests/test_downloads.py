"""Downloaded weights (servers on 127.0.0.1 only, never the network): one cache entry per URL, each file
verified against a given or published SHA-256 and pinned to the digest of its first download; an entry
that fails is deleted and fetched again, never served; https unless the user allows http."""
import dataclasses
import hashlib
import io
import shutil

import numpy as np
import paddle
import pytest

import ppcls_ext
from conftest import quick_argv, run_main
from local_server import LocalServer, tls_certificate
from ppcls_ext import cli, registry, weights
from ppcls_ext.weights import (IncompatibleWeightsError, WeightsDownloadError, cache_entry, download,
                               published_checksum, randomize_)

NAME = "MicroNet_M0_pretrained.pdparams"


def weights_file(seed):
    """(bytes of a MicroNet_M0 .pdparams with random weights from `seed`, its arrays)."""
    model = ppcls_ext.create_model("MicroNet_M0", class_num=10)
    randomize_(model.state_dict(), seed=seed)
    buffer = io.BytesIO()
    paddle.save(model.state_dict(), buffer)
    return buffer.getvalue(), {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def two_weights():
    return weights_file(1), weights_file(2)


def assert_holds(model, arrays):
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), arrays[key], err_msg=key)


def cached_files(home):
    return sorted(str(p.relative_to(home)) for p in (home / "weights").rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def log_to_this_test():
    """The package's log handler writes to this test's captured stdout (not to an earlier test's, closed)."""
    from ppcls_ext.engine.log import init_logger

    init_logger()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PPCLS_EXT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def server(two_weights, monkeypatch):
    """Over http (allowed for these tests): weights A at /a/ and /other/, B at /b/ and /official/."""
    monkeypatch.setenv(weights.ALLOW_HTTP_ENV, "1")
    (a, _), (b, _) = two_weights
    srv = LocalServer({f"/a/{NAME}": (200, a, None), f"/b/{NAME}": (200, b, None), f"/other/{NAME}": (200, a, None),
                       f"/official/{NAME}": (200, b, None)})
    yield srv
    srv.close()


def test_two_urls_with_one_file_name_each_get_their_own_weights(server, home, two_weights):
    (_, a), (_, b) = two_weights
    for _ in range(2):
        assert_holds(ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=f"{server.url}/a/{NAME}"), a)
        assert_holds(ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=f"{server.url}/b/{NAME}"), b)
    assert server.requests == [f"/a/{NAME}", f"/b/{NAME}"]  # each fetched once, then served from its own entry
    entries = {cache_entry(f"{server.url}/{d}/{NAME}").parent.name for d in "ab"}
    assert cached_files(home) == sorted(f"weights/{e}/{NAME}{suffix}" for e in entries for suffix in ("", ".sha256"))


def test_pretrained_true_never_returns_a_file_downloaded_from_another_url(server, home, two_weights, monkeypatch):
    (_, a), (_, b) = two_weights
    assert_holds(ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=f"{server.url}/other/{NAME}"), a)
    official = dataclasses.replace(registry._REGISTRY["MicroNet_M0"], weights_url=f"{server.url}/official/{NAME}")
    monkeypatch.setitem(registry._REGISTRY, "MicroNet_M0", official)
    assert_holds(ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=True), b)
    assert server.requests == [f"/other/{NAME}", f"/official/{NAME}"]


def test_http_is_refused_unless_allowed(two_weights, home, monkeypatch, digits, tmp_path, capsys):
    monkeypatch.delenv(weights.ALLOW_HTTP_ENV, raising=False)
    srv = LocalServer({f"/a/{NAME}": (200, two_weights[0][0], None)})
    try:
        url = f"{srv.url}/a/{NAME}"
        with pytest.raises(WeightsDownloadError, match=rf"refusing to download {url}: weights are fetched over https only"
                                                        rf".*set {weights.ALLOW_HTTP_ENV}=1 to allow http"):
            ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=url)
        status, _, err = run_main(lambda argv: cli.main("infer", argv),
                                  quick_argv(digits, tmp_path, f"Global.pretrained_model={url}"), capsys)
        assert status == 2 and err.startswith(f"error: refusing to download {url}") and err.count("\n") == 1
        assert srv.requests == [] and cached_files(home) == []
        monkeypatch.setenv(weights.ALLOW_HTTP_ENV, "1")
        assert_holds(ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=url), two_weights[0][1])
    finally:
        srv.close()


def test_https_downloads_are_pinned_and_a_redirect_to_http_is_refused(two_weights, home, tmp_path, monkeypatch):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: it makes the loopback server's TLS certificate")
    monkeypatch.delenv(weights.ALLOW_HTTP_ENV, raising=False)
    certificate = tls_certificate(str(tmp_path))
    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])  # the client trusts the loopback certificate
    plain = LocalServer({f"/a/{NAME}": (200, two_weights[0][0], None)})
    secure = LocalServer({f"/a/{NAME}": (200, two_weights[0][0], None)}, redirects={f"/moved/{NAME}": f"{plain.url}/a/{NAME}"},
                         certificate=certificate)
    try:
        path = download(f"{secure.url}/a/{NAME}")
        digest = hashlib.sha256(two_weights[0][0]).hexdigest()
        assert path.read_bytes() == two_weights[0][0]
        assert (path.parent / f"{NAME}.sha256").read_text() == f"{digest}  {NAME}\n"  # sha256sum's format
        with pytest.raises(WeightsDownloadError, match=rf"refusing to download {plain.url}/a/{NAME}: .*https only"):
            download(f"{secure.url}/moved/{NAME}")
        assert plain.requests == [] and not cache_entry(f"{secure.url}/moved/{NAME}").exists()
    finally:
        plain.close()
        secure.close()


def test_a_changed_or_unpinned_entry_is_deleted_and_fetched_again_never_served(server, home, two_weights, engine_log):
    url = f"{server.url}/a/{NAME}"
    path = download(url)
    path.write_bytes(path.read_bytes() + b"tampered")
    assert_holds(ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=url), two_weights[0][1])
    assert any(f"cached weights {path} changed since it was downloaded: deleted, downloading {url} again" in r.getMessage()
               for r in engine_log.records)
    (path.parent / f"{NAME}.sha256").unlink()  # as a download killed between the file and its pin leaves it
    assert download(url).read_bytes() == two_weights[0][0]
    assert server.requests == [f"/a/{NAME}"] * 3
    path.write_bytes(b"changed")
    server.files.clear()  # the server has gone: the changed file is still not served
    with pytest.raises(WeightsDownloadError, match="HTTP Error 404"):
        download(url)
    assert cached_files(home) == []


def test_a_given_checksum_is_checked_for_downloads_local_files_and_the_config(server, home, two_weights, digits,
                                                                               tmp_path, capsys):
    (data, arrays), _ = two_weights
    right, wrong = hashlib.sha256(data).hexdigest(), "0" * 64
    url = f"{server.url}/a/{NAME}"
    assert_holds(ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=url, pretrained_sha256=right.upper()), arrays)
    with pytest.raises(WeightsDownloadError, match=rf"download of {url} does not match its SHA-256 \(given: {wrong}, "
                                                    rf"got {right}\); nothing was kept"):
        ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=url, pretrained_sha256=wrong)
    assert cached_files(home) == []  # the pinned entry failed the given checksum: deleted, and so was the new copy
    local = tmp_path / "local.pdparams"
    local.write_bytes(data)
    with pytest.raises(IncompatibleWeightsError, match=rf"local\.pdparams: its SHA-256 is {right}, not the expected {wrong}"):
        ppcls_ext.create_model("MicroNet_M0", class_num=10, pretrained=str(local), pretrained_sha256=wrong)
    for value, expected in ((wrong, f"does not match its SHA-256 (given: {wrong}"),
                            ("abc", "Global.pretrained_model_sha256 must be a SHA-256 (64 hex digits; quote it in YAML), got 'abc'")):
        status, _, err = run_main(lambda argv: cli.main("infer", argv), quick_argv(
            digits, tmp_path, f"Global.pretrained_model={url}", f"Global.pretrained_model_sha256={value}"), capsys)
        assert status == 2 and expected in err and err.count("\n") == 1, err


def test_checksums_published_in_torchvision_file_names_are_checked(server, home, two_weights, monkeypatch):
    assert published_checksum("https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth") == \
        weights.Checksum("7f5810bc", "published in its file name")
    assert published_checksum("https://example.org/models/efficientnet_b0_rwightman-7f5810bc.pth") is None
    monkeypatch.setattr(weights, "HASH_IN_NAME_HOSTS", ("127.0.0.1",))  # our loopback server plays that host
    data = two_weights[0][0]
    prefix = hashlib.sha256(data).hexdigest()[:8]
    server.files.update({f"/m0-{prefix}.pdparams": (200, data, None), "/m0-00000000.pdparams": (200, data, None)})
    assert download(f"{server.url}/m0-{prefix}.pdparams").read_bytes() == data
    with pytest.raises(WeightsDownloadError, match=r"does not match its SHA-256 \(published in its file name: 00000000"):
        download(f"{server.url}/m0-00000000.pdparams")
