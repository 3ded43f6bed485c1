"""timm and torchvision families as backbones: features equal the library's own pre-logits,
``layer=`` reaches intermediate outputs, ``unfreeze=1`` trains only the top group.

Random weights only (``pretrained=False`` / ``weights=None``); small models and inputs.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier, PretrainedFeatureExtractor
from sktransfer._backbone import host_reachable
from sktransfer._sources import torchvision as tv_source
from sktransfer.backbones import load_backbone
from sktransfer.exceptions import BackboneError

TIMM = ["test_vit", "test_resnet", "test_convnext", "test_efficientnet", "regnetx_002"]
TV = ["squeezenet1_1", "shufflenet_v2_x0_5", "mnasnet0_5", "mobilenet_v3_small"]


def _rows_match(ours, ref):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.999
    assert np.allclose(ours, ref, rtol=1e-4, atol=1e-4)


def _x(bb, n=2, seed=0):
    s = bb.data_config.input_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _timm_pair(name):
    torch.manual_seed(0)
    bb = load_backbone(f"timm/{name}", pretrained=False).eval()
    torch.manual_seed(0)  # the same random weights
    return bb, timm.create_model(name, pretrained=False).eval()


def _tv_reference(model, x):
    """Input of the model's final classification layer (pooled when it is a map)."""
    final = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    seen = {}
    handle = final.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    out = seen["x"]
    return out.mean((2, 3)) if out.ndim == 4 else out


@pytest.mark.parametrize("name", TIMM)
def test_timm_features_are_timm_pre_logits(name):
    bb, model = _timm_pair(name)
    assert bb.stage_names[0] == "stem" and len(bb.stage_names) >= 4
    x = _x(bb)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
        _rows_match(bb(x), ref)
        # another batch size gives the same rows
        _rows_match(bb(x[:1]), ref[:1])
        mid = bb(x, stop=2)  # an intermediate output: a map or tokens, not a vector
        assert mid.ndim in (3, 4)
        _rows_match(bb(mid, start=2), ref)


@pytest.mark.parametrize("name", TV)
def test_torchvision_features_are_the_final_layers_input(name):
    torch.manual_seed(0)
    bb = load_backbone(f"torchvision/{name}", pretrained=False).eval()
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = bb(x)
        out = out.mean((2, 3)) if out.ndim == 4 else out
        _rows_match(out, _tv_reference(model, x))
        assert bb(x, stop=2).ndim == 4


def test_torchvision_densenet_includes_the_final_relu():
    # a small DenseNet (torchvision's class, as densenet121 is built): before, the features
    # stopped before the final ReLU (cosine 0.69 to the model's own)
    model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=8)
    model.eval()
    bb = tv_source.wrap(model, "densenet", DataConfig(input_size=32))
    assert bb.stage_names[1:3] == ["features.denseblock1", "features.transition1"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _rows_match(bb(x), _tv_reference(model, x))
        assert (bb(x) >= 0).all()  # after the ReLU


@pytest.mark.parametrize(
    "build",
    [
        lambda: torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64
        ),
        lambda: torchvision.models.SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1], num_heads=[1, 1, 1], window_size=[2, 2]
        ),
    ],
    ids=["vit", "swin"],
)
def test_torchvision_transformers(build):
    torch.manual_seed(0)
    model = build().eval()
    bb = tv_source.wrap(model, "tiny", DataConfig(input_size=32))
    assert len(bb.stage_names) >= 4
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _rows_match(bb(x), _tv_reference(model, x))
        mid = bb(x, stop=2)
        if isinstance(model, torchvision.models.SwinTransformer):
            assert mid.shape == (3, 16, 8, 8)  # handed on as (N, C, H, W)
        else:
            assert mid.shape == (3, 1 + 16, 32)  # class token + patch tokens


def test_timm_swin_hands_on_channels_first_maps():
    from timm.models.swin_transformer import SwinTransformer

    from sktransfer._sources import timm as timm_source

    torch.manual_seed(0)
    model = SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1, 1), num_heads=(1, 1, 1)
    ).eval()
    bb = timm_source.wrap(model, "tiny_swin", DataConfig(input_size=32))
    assert bb.stage_names == ["stem", "layers.0", "layers.1", "layers.2"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _rows_match(bb(x), model.forward_head(model.forward_features(x), pre_logits=True))
        assert bb(x, stop=2).shape == (2, 16, 8, 8)  # (N, C, H, W), though Swin runs NHWC
        # max pooling of the final map, taken over space (not over channels)
        want = model.forward_features(x).amax((1, 2))
        got = bb.for_pooling("max")(x).amax((2, 3))
        _rows_match(got, want)


def test_token_pooling_modes_on_a_vit():
    bb, model = _timm_pair("test_vit")
    x = _x(bb)
    with torch.no_grad():
        tokens = model.forward_features(x)
    npt = model.num_prefix_tokens
    want = {
        "avg": model.forward_head(tokens, pre_logits=True),
        "cls": tokens[:, 0],
        "mean": tokens[:, npt:].mean(1),
        "cls+mean": torch.cat([tokens[:, 0], tokens[:, npt:].mean(1)], 1),
    }
    for mode, ref in want.items():
        # the given (random) weights as they are: the comparison is with the same model
        ext = PretrainedFeatureExtractor(bb, pooling=mode, batch_size=2, precision="fp32").fit()
        net = ext._feature_net().eval()
        with torch.no_grad():
            _rows_match(net(x), ref)
        assert ext.n_features_out_ == ref.shape[1]
    # layer= gives an intermediate block's tokens, pooled
    ext = PretrainedFeatureExtractor(bb, layer="blocks.1", pooling="cls", precision="fp32").fit()
    with torch.no_grad():
        assert ext._feature_net()(x).shape == (2, model.embed_dim)


def test_pooling_that_needs_a_map_after_the_heads_pooling_is_refused():
    # MobileNet V3 (torchvision) pools, then runs Linear layers: no map at its last stage
    ext = PretrainedFeatureExtractor("torchvision/mobilenet_v3_small", pretrained=False, pooling="max", precision="fp32")
    with pytest.raises(BackboneError, match="layer='features.12'"):
        ext.fit()


@pytest.mark.parametrize("name", ["timm/test_vit", "timm/test_resnet", "torchvision/shufflenet_v2_x0_5"])
def test_unfreeze_1_trains_only_the_top_group(name):
    torch.manual_seed(0)
    bb = load_backbone(name, pretrained=False)
    s = bb.data_config.input_size if name.startswith("timm") else 64
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, (4, s, s, 3), dtype=np.uint8)
    y = np.array([0, 1, 0, 1])
    clf = FineTuneClassifier(
        bb, unfreeze=1, warmup_epochs=0, max_epochs=1, batch_size=4, lr=1e-2,
        validation_split=None, random_state=0, verbose=0,
    ).fit(X, y)
    trained = clf.net_.module_.backbone
    assert trained.stage_names == bb.stage_names
    for i, (before, after) in enumerate(zip(bb.stages, trained.stages)):
        changed = [
            not torch.equal(p0, p1.detach().cpu())
            for p0, p1 in zip(before.parameters(), after.parameters())
        ]
        if i < len(bb.stages) - 1:
            assert not any(changed), bb.stage_names[i]
        else:
            assert any(changed), "the top group did not train"


def test_unfreeze_out_of_range_lists_the_groups():
    X = np.zeros((4, 160, 160, 3), dtype=np.uint8)
    clf = FineTuneClassifier(
        "timm/test_vit", pretrained=False, unfreeze=99, max_epochs=1, validation_split=None
    )
    with pytest.raises(ValueError, match=r"blocks\.5.*from 0 \(head only\) to 7"):
        clf.fit(X, [0, 1, 0, 1])


def test_extractor_pickles_with_a_traced_backbone():
    import pickle

    ext = PretrainedFeatureExtractor("timm/test_vit", pretrained=False, pooling="cls+mean", precision="fp32").fit()
    X = np.random.default_rng(0).integers(0, 255, (2, 40, 40, 3), dtype=np.uint8)
    again = pickle.loads(pickle.dumps(ext))
    np.testing.assert_allclose(again.transform(X), ext.transform(X), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- small defects


def test_pretrained_false_needs_no_download():
    # before: PretrainedFeatureExtractor had no `pretrained` and always fetched weights
    ext = PretrainedFeatureExtractor("timm/test_resnet", pretrained=False, precision="fp32")
    assert ext.get_params()["pretrained"] is False
    X = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    assert ext.fit(X).transform(X).shape == (2, ext.n_features_out_)


def test_data_config_derives_resize_from_input_size():
    # before: DataConfig(input_size=64) kept resize_size=256 (a 1/16 central crop)
    assert DataConfig(input_size=64).resize_size == 73  # floor(64 / 0.875), as timm does
    assert DataConfig(input_size=64, crop_pct=1.0).resize_size == 64
    assert DataConfig(input_size=64, resize_size=80).resize_size == 80
    assert DataConfig(input_size=64, resize_size=None).resize_size is None
    with pytest.raises(BackboneError, match="resize_size"):
        DataConfig(resize_size="big")


def test_spec_stages_that_skip_the_class_token_are_refused():
    # before: these stages silently ran without the class token and position embedding
    vit = timm.create_model("test_vit", pretrained=False, num_classes=0)
    spec = BackboneSpec(
        module=vit, stages=["patch_embed", "blocks", "norm"], data_config=DataConfig(input_size=160)
    )
    with pytest.raises(BackboneError, match=r"stages \['patch_embed', 'blocks', 'norm'\]"):
        load_backbone(spec)


def test_families_that_used_to_be_refused_now_load():
    # before: "not a supported family"
    for name in ("timm/test_vit", "timm/test_vit_relpos", "torchvision/squeezenet1_1"):
        assert len(load_backbone(name, pretrained=False).stage_names) > 1


@pytest.mark.skipif(host_reachable("huggingface.co"), reason="a network: this would download")
def test_timm_offline_fails_fast_without_hf_hub_offline(tmp_path):
    # before: with HF_HUB_OFFLINE unset, the hub client retried for about 51 s
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HOME"] = str(tmp_path)  # an empty cache
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    code = (
        "import time, sktransfer.backbones as b\n"
        "from sktransfer.exceptions import BackboneNotAvailableError\n"
        "t = time.time()\n"
        "try:\n    b.load_backbone('timm/test_resnet')\n"
        "except BackboneNotAvailableError as e:\n    print('offline' in str(e), time.time() - t)\n"
    )
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[0] == "True", out.stderr[-2000:]
    assert float(out.stdout.split()[1]) < 15
    assert time.time() - start < 60


@pytest.mark.parametrize("source_name", ["timm", "torchvision"])
def test_the_model_is_split_and_checked_before_any_download(source_name, monkeypatch):
    # before: weights were fetched first and the model checked as supported afterwards
    import importlib

    source = importlib.import_module(f"sktransfer._sources.{source_name}")
    fetched = []
    monkeypatch.setattr(source, "_check_download", lambda *a, **k: fetched.append(a))

    def refuse(*args, **kwargs):
        raise BackboneError("this model cannot be split")

    monkeypatch.setattr(source, "wrap", refuse)
    name = "timm/test_resnet" if source_name == "timm" else "torchvision/squeezenet1_1"
    with pytest.raises(BackboneError, match="cannot be split"):
        load_backbone(name, pretrained=True)
    assert fetched == []  # the download step was never reached
