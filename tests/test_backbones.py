"""sktransfer.backbones: registry, stage splits, checkpoints, specs and pooling."""

import os
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from sktransfer import backbones
from sktransfer.backbones import (
    Backbone,
    BackboneSpec,
    DataConfig,
    Pooling,
    list_backbones,
    load_backbone,
    register_backbone,
    save_backbone,
)
from sktransfer.exceptions import BackboneError, BackboneNotAvailableError, CheckpointError

LITE0_STAGES = ["stem"] + [f"blocks.{i}" for i in range(7)] + ["head"]


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0").eval()


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so test registrations do not leak."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    return backbones._REGISTRY


def _tiny_builder(pretrained):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    return load_backbone(BackboneSpec(module=net, data_config=DataConfig(input_size=16)))


def _copy_weights_by_position(src: nn.Module, dst: nn.Module, skip=()) -> None:
    """Load ``src``'s state into ``dst`` whose keys have other names but the same order
    (``skip``: prefixes of ``dst`` keys that ``src`` does not hold)."""
    src_items = list(src.state_dict().items())
    dst_state = dst.state_dict()
    dst_keys = [k for k in dst_state if not k.startswith(tuple(skip))]
    assert len(src_items) == len(dst_keys)
    state = {}
    for key, (_, value) in zip(dst_keys, src_items):
        assert dst_state[key].shape == value.shape, key
        state[key] = value
    dst.load_state_dict(state, strict=not skip)


# --------------------------------------------------------------------------- registry


def test_register_and_list(registry):
    register_backbone("test_tiny_net", _tiny_builder, description="a test net")
    assert "test_tiny_net" in list_backbones()
    assert list_backbones("test_tiny*") == ["test_tiny_net"]
    bb = load_backbone("test_tiny_net")
    assert isinstance(bb, Backbone) and bb.stage_names == ["0", "1"]


def test_register_duplicate_raises(registry):
    register_backbone("test_dup_net", _tiny_builder)
    with pytest.raises(BackboneError, match="already registered"):
        register_backbone("test_dup_net", _tiny_builder)
    with pytest.raises(BackboneError, match="already registered"):
        register_backbone("efficientnet_lite0", _tiny_builder)


def test_listing_reports_declared_metadata_without_building(registry):
    calls = []
    config = DataConfig(input_size=16)

    def counting_builder(pretrained):
        calls.append(pretrained)
        return _tiny_builder(pretrained)

    register_backbone(
        "test_counted_net", counting_builder, description="counted", data_config=config,
        stages=["0", "1"], pooling="max",
    )  # fmt: skip
    rows = {row["name"]: row for row in list_backbones(details=True)}
    assert calls == []  # listing builds nothing
    assert rows["test_counted_net"] == {
        "name": "test_counted_net", "description": "counted", "requires": None,
        "available": True, "modality": "image", "pooling": "max", "stages": ["0", "1"],
        "data_config": config.to_dict(),
    }  # fmt: skip
    lite0 = rows["efficientnet_lite0"]
    assert lite0["modality"] == "image" and lite0["pooling"] == "auto"
    assert lite0["stages"] == LITE0_STAGES
    assert lite0["data_config"] == {
        "input_size": 224, "resize_size": 256, "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "in_chans": 3, "crop_pct": 0.875,
    }  # fmt: skip
    minilm = rows["all-MiniLM-L6-v2"]
    assert minilm["modality"] == "text" and minilm["pooling"] == "auto"
    assert minilm["stages"] == ["embeddings"] + [f"layer.{i}" for i in range(6)]
    assert minilm["data_config"] == {"max_length": 256}
    assert list_backbones("test_counted*", details=True) == [rows["test_counted_net"]]
    assert calls == []
    assert load_backbone("test_counted_net").stage_names == ["0", "1"] and calls == [True]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2", "all-MiniLM-L6-v2"])
def test_bundled_entries_declare_what_they_build(name):
    declared = list_backbones(name, details=True)[0]
    bb = load_backbone(name, pretrained=False)
    assert bb.stage_names == declared["stages"]
    assert bb.data_config.to_dict() == declared["data_config"]
    assert bb.modality == declared["modality"]


def test_a_declaration_the_builder_does_not_keep_is_refused(registry):
    register_backbone("test_lying_net", _tiny_builder, stages=["a", "b"])
    with pytest.raises(BackboneError, match="declared \\('a', 'b'\\), built \\('0', '1'\\)"):
        load_backbone("test_lying_net")
    with pytest.raises(BackboneError, match="pooling must be one of"):
        register_backbone("test_bad_pooling", _tiny_builder, pooling="median")


def test_list_backbones_patterns():
    names = list_backbones()
    assert names == sorted(names)
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(names)
    assert list_backbones("efficientnet_lite*") == [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    ]
    assert list_backbones(["*lite0", "*lite2"]) == ["efficientnet_lite0", "efficientnet_lite2"]
    assert list_backbones("no_such_*") == []
    assert "efficientnet_lite0" in list_backbones(available_only=True)


def test_unknown_name_lists_known_ones():
    with pytest.raises(BackboneError, match="Unknown backbone 'no_such_net_xyz'") as info:
        load_backbone("no_such_net_xyz")
    msg = str(info.value)
    for name in list_backbones():
        assert name in msg
    assert isinstance(info.value, ValueError)


def test_wrong_backbone_type():
    with pytest.raises(BackboneError, match="got int"):
        load_backbone(123)


# --------------------------------------------------------------------------- efficientnet_lite0


def test_lite0_offline_and_data_config(lite0):
    assert lite0.name == "efficientnet_lite0"
    assert lite0.stage_names == LITE0_STAGES
    cfg = lite0.data_config
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5)
    assert cfg.interpolation == "bicubic"
    assert (cfg.resize_size, cfg.input_size, cfg.in_chans) == (256, 224, 3)
    assert isinstance(lite0.classifier, nn.Linear)
    assert (lite0.classifier.in_features, lite0.classifier.out_features) == (1280, 1000)
    # the weights really are the pretrained ones, not timm's random init
    random_init = load_backbone("efficientnet_lite0", pretrained=False)
    w, w0 = lite0.stages[0][0].weight, random_init.stages[0][0].weight
    assert not torch.allclose(w, w0)


def test_lite0_stages_compose_to_timm_forward_features(lite0):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    _copy_weights_by_position(lite0, model)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = lite0(x)
        ref = model.forward_features(x)
        assert ours.shape == (2, 1280, 4, 4)
        torch.testing.assert_close(ours, ref)
        # the classifier is the model's own head on the pooled features
        torch.testing.assert_close(lite0.classifier(ours.mean((2, 3))), model(x))
        # start/stop run a slice of the stages: prefix then suffix gives the whole
        mid = lite0(x, stop=4)
        assert mid.shape == (2, 40, 16, 16)
        torch.testing.assert_close(lite0(mid, start=4), ours)


def test_stage_index(lite0):
    assert lite0.stage_index(None) == len(LITE0_STAGES)
    assert lite0.stage_index("blocks.3") == 5
    assert lite0.stage_index(0) == 1
    assert lite0.stage_index(-1) == len(LITE0_STAGES)
    for bad in ("blocks.9", 99, -99):
        with pytest.raises(BackboneError, match="Valid layers") as info:
            lite0.stage_index(bad)
        assert "blocks.3" in str(info.value)


# --------------------------------------------------------------------------- torchvision / timm


@pytest.mark.parametrize(
    ("name", "stage_names"),
    [
        ("torchvision/resnet18", ["stem", "layer1", "layer2", "layer3", "layer4"]),
        ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4"]),  # plain name: torchvision
        # MobileNet V3's pre-logits come after the penultimate Linear of its classifier
        (
            "torchvision/mobilenet_v3_small",
            ["stem", *[f"features.{i}" for i in range(1, 13)], "classifier"],
        ),
    ],
)
def test_torchvision_split_composes_to_pre_logits(name, stage_names):
    torch.manual_seed(0)
    bb = load_backbone(name, pretrained=False).eval()
    assert bb.stage_names == stage_names
    arch = name.rpartition("/")[2]
    torch.manual_seed(0)  # the same random weights
    model = torchvision.models.get_model(arch, weights=None).eval()
    final = model.fc if hasattr(model, "fc") else model.classifier[-1]
    seen = {}
    final.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        feats = bb(x)
        torch.testing.assert_close(feats, seen["x"])
        torch.testing.assert_close(bb.classifier(feats), logits)
        # start/stop run a slice of the stages: prefix then suffix gives the whole
        torch.testing.assert_close(bb(bb(x, stop=2), start=2), feats)
    cfg = bb.data_config
    assert (cfg.input_size, cfg.resize_size) == (224, 256)
    assert cfg.mean == backbones.IMAGENET_MEAN


@pytest.mark.parametrize("name", ["timm/resnet18", "timm/mobilenetv3_small_050", "timm/convnext_atto"])
def test_timm_split_composes_to_pre_logits(name):
    torch.manual_seed(0)
    bb = load_backbone(name, pretrained=False).eval()
    assert len(bb.stage_names) >= 4 and bb.stage_names[0] == "stem"
    torch.manual_seed(0)
    model = timm.create_model(name.partition("/")[2], pretrained=False).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = bb(x)
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(feats, ref)
        # the classifier is the model's own, on the pre-logits
        torch.testing.assert_close(bb.classifier(feats), model(x))
    cfg = timm.data.resolve_model_data_config(model)
    assert bb.data_config.input_size == cfg["input_size"][-1]
    assert bb.data_config.mean == tuple(cfg["mean"])


@pytest.mark.parametrize("name", ["torchvision/resnet18", "timm/resnet18"])
def test_pretrained_download_offline_raises_fast(name, tmp_path, monkeypatch):
    # an empty torch hub cache, so torchvision must try (and fail) to download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest before timm is imported
    try:
        load_backbone(name)
    except BackboneNotAvailableError as exc:
        msg = str(exc)
    else:
        pytest.skip(f"{name} weights are cached on this machine; cannot test the offline error")
    assert "offline" in msg
    assert "efficientnet_lite0" in msg
    assert "pretrained=False" in msg


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def lite0_checkpoint(tmp_path_factory):
    bb = load_backbone("efficientnet_lite0", pretrained=False)
    bb.data_config = DataConfig(input_size=192, resize_size=220, mean=(0.1, 0.2, 0.3))
    return bb, save_backbone(bb, tmp_path_factory.mktemp("ckpt") / "lite0.pt")


@pytest.mark.parametrize("as_type", [str, Path])
def test_save_load_round_trip(lite0_checkpoint, as_type):
    bb, path = lite0_checkpoint
    loaded = load_backbone(as_type(path))
    assert loaded.stage_names == bb.stage_names
    assert loaded.data_config == bb.data_config
    ref, got = bb.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=0)
    # the file holds tensors and plain types only
    assert "state_dict" in torch.load(path, weights_only=True)


def test_spec_with_weights_file(lite0_checkpoint, tmp_path):
    bb, _ = lite0_checkpoint
    path = tmp_path / "plain_state.pth"
    torch.save(bb.state_dict(), path)
    loaded = load_backbone(BackboneSpec(arch="efficientnet_lite0", weights=path))
    torch.testing.assert_close(loaded.stages[0][0].weight, bb.stages[0][0].weight)
    assert loaded.data_config.input_size == 224  # the arch's own config, not the saved one


def test_wrong_architecture_checkpoint(tmp_path):
    resnet = load_backbone("torchvision/resnet18", pretrained=False)
    path = tmp_path / "resnet.pth"
    torch.save(resnet.state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit this architecture") as info:
        load_backbone(BackboneSpec(arch="efficientnet_lite0", weights=path))
    msg = str(info.value)
    assert "missing keys ['stages.0.0.weight'" in msg  # lite0 keys absent from the file
    assert "unexpected keys ['stages.0.conv1.weight'" in msg  # resnet keys
    assert "classifier.weight: file (1000, 512) vs model (1000, 1280)" in msg
    # a save_backbone file whose metadata names another architecture
    save_backbone(resnet, tmp_path / "mislabelled.pt", arch="efficientnet_lite0")
    with pytest.raises(CheckpointError, match="do not fit this architecture"):
        load_backbone(tmp_path / "mislabelled.pt")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    state = load_backbone("efficientnet_lite0", pretrained=False).state_dict()
    state["classifier.weight"] = torch.zeros(10, 1280)
    state["classifier.bias"] = torch.zeros(10)
    path = tmp_path / "ten_classes.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_backbone(BackboneSpec(arch="efficientnet_lite0", weights=path))
    msg = str(info.value)
    assert "2 shape mismatches" in msg
    assert "classifier.weight: file (10, 1280) vs model (1000, 1280)" in msg


def test_truncated_and_garbage_checkpoints(lite0_checkpoint, tmp_path):
    _, good = lite0_checkpoint
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(CheckpointError, match="Could not read checkpoint") as info:
            load_backbone(path)
        assert str(path) in str(info.value)
        with pytest.raises(CheckpointError):
            load_backbone(BackboneSpec(arch="efficientnet_lite0", weights=path))


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(tmp_path / "absent.pt")


def test_checkpoint_without_metadata(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no sktransfer metadata"):
        load_backbone(path)


def _write_marker(path):
    Path(path).write_text("code ran")
    return {}


class _Malicious:
    """Unpickling this object calls _write_marker: arbitrary code on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


def test_pickled_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save(
        {"sktransfer_backbone": {"arch": "efficientnet_lite0"}, "state_dict": _Malicious(marker)},
        path,
    )
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        load_backbone(path)
    assert "evil.pt" in str(info.value)
    with pytest.raises(CheckpointError):
        load_backbone(BackboneSpec(arch="efficientnet_lite0", weights=path))
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


# --------------------------------------------------------------------------- specs


def test_spec_sequential_splits_into_children():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3))
    cfg = DataConfig(input_size=32, resize_size=None)
    bb = load_backbone(BackboneSpec(module=net, data_config=cfg, name="tiny"))
    assert bb.stage_names == ["0", "1", "2"]
    assert bb.data_config is cfg and bb.name == "tiny"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(bb(x), net(x))
    assert bb(x, stop=1).shape == (2, 8, 30, 30)


class _TwoPart(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.refine = nn.Conv2d(6, 5, 1)
        self.unused_head = nn.Linear(5, 2)

    def forward(self, x):
        return self.refine(self.features(x))


def test_spec_explicit_stages():
    net = _TwoPart()
    bb = load_backbone(BackboneSpec(module=net, stages=["features", "refine"]))
    assert bb.stage_names == ["features", "refine"]
    assert bb.data_config == DataConfig()  # ImageNet defaults at 224
    x = torch.randn(1, 3, 20, 20)
    torch.testing.assert_close(bb(x), net(x))
    assert bb.stage_index("features") == 1


def test_plain_module_is_one_stage():
    bb = load_backbone(_TwoPart())
    assert bb.stage_names == ["body"]
    assert bb.name == "_TwoPart"


def test_spec_errors():
    with pytest.raises(BackboneError, match="needs a module or an arch"):
        load_backbone(BackboneSpec())
    with pytest.raises(AttributeError):
        load_backbone(BackboneSpec(module=_TwoPart(), stages=["no_such_child"]))


def test_data_config_validation():
    with pytest.raises(BackboneError, match="interpolation"):
        DataConfig(interpolation="lanczos")
    with pytest.raises(BackboneError, match="input_size"):
        DataConfig(input_size=0)
    assert DataConfig(mean=[0, 1, 0]).mean == (0.0, 1.0, 0.0)


# --------------------------------------------------------------------------- pooling


def test_pooling_feature_map():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    torch.testing.assert_close(Pooling("avg")(x), x.mean((2, 3)))
    torch.testing.assert_close(Pooling("max")(x), x[:, :, 1, 1])
    assert Pooling("flatten")(x).shape == (2, 12)
    torch.testing.assert_close(Pooling("none")(x), x.reshape(2, -1))
    for mode in ("token", "cls"):
        with pytest.raises(BackboneError, match="feature map"):
            Pooling(mode)(x)


def test_pooling_tokens():
    x = torch.randn(2, 5, 4)  # one prefix (class) token + 4 patch tokens
    torch.testing.assert_close(Pooling("token")(x), x[:, 0])
    torch.testing.assert_close(Pooling("cls")(x), x[:, 0])
    torch.testing.assert_close(Pooling("avg")(x), x[:, 1:].mean(1))
    torch.testing.assert_close(Pooling("max")(x), x[:, 1:].amax(1))
    torch.testing.assert_close(Pooling("avg", num_prefix_tokens=0)(x), x.mean(1))
    assert Pooling("flatten")(x).shape == (2, 20)


def test_pooling_vectors_pass_through():
    x = torch.randn(3, 7)
    for mode in Pooling.MODES:
        torch.testing.assert_close(Pooling(mode)(x), x)


def test_pooling_bad_mode():
    with pytest.raises(BackboneError, match="pooling must be one of"):
        Pooling("median")
