"""MobileNetV2 converted from the shared TFLite file: parsing, conversion, classifier, encoder, cache.

Oracles: the integer interpreter of the quantized graph in ``mambaad.encoders.tflite_reader`` (always)
and, when the ``ai-edge-litert`` wheel is installed, TFLite's own interpreter (which also checks the
integer interpreter operator by operator). Tests that need the shared .tflite file skip without it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mambaad.encoders import build_encoder
from mambaad.encoders import tflite_mobilenet as tm
from mambaad.encoders.tflite_reader import read_tflite, run_operator, run_quantized, same_padding

IMAGES = {"cat": "Egyptian cat", "grace_hopper": "military uniform", "bird": "chickadee"}
CAT_TOP3 = ["Egyptian cat", "tabby, tabby cat", "tiger cat"]  # the shared README's listing


@pytest.fixture(scope="session")
def tflite_path() -> Path:
    try:
        return tm.default_tflite_path()
    except FileNotFoundError as exc:
        pytest.skip(f"the shared MobileNetV2 .tflite file is absent: {exc}")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test converts into a throw-away cache, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(tm.ENV_CACHE, str(tmp_path_factory.mktemp("mambaad_cache")))
        yield


@pytest.fixture(scope="session")
def graph(tflite_path: Path):
    return read_tflite(tflite_path)


@pytest.fixture(scope="session")
def conversion(graph):
    return tm.convert_graph(graph)


@pytest.fixture(scope="session")
def classifier(tflite_path: Path) -> tm.MobileNetV2TFLite:
    return tm.tflite_mobilenet_v2(tflite_path)


@pytest.fixture(scope="session")
def labels(tflite_path: Path) -> list[str]:
    return (tflite_path.parent / "imagenet_labels.txt").read_text().splitlines()


def load_image(tflite_path: Path, name: str, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels, resized bilinearly to ``size`` = (W, H)."""
    from PIL import Image

    with Image.open(tflite_path.parent / f"{name}.bmp") as im:
        return np.array(im.convert("RGB").resize(size, Image.BILINEAR))


def to_unit(pixels: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0


def logits_tensor(graph) -> int:
    return next(op for op in graph.operators if op.kind == "SOFTMAX").inputs[0]


def oracle_logits(graph, pixels: np.ndarray) -> np.ndarray:
    """The integer graph's logits (dequantized input of its SOFTMAX), ``(1001,)``."""
    t = logits_tensor(graph)
    return graph.tensors[t].dequantize(run_quantized(graph, pixels[None], keep=(t,))[t])[0]


@pytest.fixture(scope="session")
def oracle(graph, tflite_path: Path) -> dict[str, np.ndarray]:
    """The integer graph's logits for each shared image at 224 x 224."""
    return {name: oracle_logits(graph, load_image(tflite_path, name)) for name in IMAGES}


def topk(scores: np.ndarray, k: int = 5) -> list[int]:
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


# ------------------------------------------------------------------------------------------ reader


def test_same_padding_is_tf_same():
    assert same_padding(224, 3, 2) == (0, 1)  # even size, stride 2: the extra pixel at the end
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(112, 3, 1) == (1, 1)
    assert same_padding(8, 1, 2) == (0, 0)
    for size in range(1, 40):
        for k, s in ((3, 1), (3, 2), (5, 2), (1, 1)):
            before, after = same_padding(size, k, s)
            assert after - before in (0, 1)
            assert (size + before + after - k) // s + 1 == -(-size // s)


def test_reader_sees_the_mobilenet_graph(graph, tflite_path: Path):
    kinds = [op.kind for op in graph.operators]
    assert kinds.count("CONV_2D") == 36 and kinds.count("DEPTHWISE_CONV_2D") == 17
    assert kinds.count("ADD") == 10 and kinds[0] == "QUANTIZE" and kinds[-2:] == ["SOFTMAX", "QUANTIZE"]
    inp = graph.tensors[graph.inputs[0]]
    assert inp.shape == (1, 224, 224, 3) and inp.dtype == np.uint8
    assert graph.tensors[graph.outputs[0]].shape == (1, 1001)
    assert graph.sha256 == tm.file_sha256(tflite_path)


def test_bias_scales_are_input_times_weight_scales(graph):
    """The file's own int32 bias scales agree with the scale_in * scale_w the converter uses."""
    convs = [op for op in graph.operators if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == 53
    for op in convs:
        x_t, w_t, b_t = (graph.tensors[i] for i in op.inputs)
        assert w_t.dtype == np.int8 and b_t.dtype == np.int32 and np.all(w_t.zero_point == 0)
        assert w_t.scale.size == b_t.scale.size == w_t.shape[w_t.quantized_dim]
        expected = float(x_t.scale[0]) * w_t.scale.astype(np.float64)
        np.testing.assert_allclose(b_t.scale, expected, rtol=1e-5)


def test_dequantize_per_channel(graph):
    w_t = next(graph.tensors[op.inputs[1]] for op in graph.operators if op.kind == "DEPTHWISE_CONV_2D")
    real = w_t.dequantize()  # (1, 3, 3, C), scales along the last axis
    c = 5
    np.testing.assert_allclose(real[..., c], w_t.data[..., c].astype(np.float64) * float(w_t.scale[c]))


# ------------------------------------------------------------------------------------------ oracles


def test_integer_oracle_matches_litert_per_operator(graph, tflite_path: Path):
    """Fed LiteRT's own inputs, every integer operator lands within one step of LiteRT's output."""
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed")
    it = litert.Interpreter(model_path=str(tflite_path), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], load_image(tflite_path, "cat")[None])
    it.invoke()
    for op in graph.operators:
        ins = [None if graph.tensors[i].data is not None else it.get_tensor(i) for i in op.inputs]
        ins = [None if a is None else a.astype(np.int64) for a in ins]
        diff = np.abs(run_operator(graph, op, ins) - it.get_tensor(op.outputs[0]).astype(np.int64))
        assert diff.max() <= 1, (op.index, op.kind, diff.max())
        assert (diff > 0).mean() < 0.01, (op.index, op.kind, (diff > 0).mean())


def test_integer_oracle_classifies_the_images(oracle, labels: list[str]):
    for name, label in IMAGES.items():
        assert labels[topk(oracle[name], 1)[0]] == label


# ------------------------------------------------------------------------------------------ classifier


@pytest.mark.parametrize("name", list(IMAGES))
def test_converted_classifier_top1_and_top5(name: str, classifier, oracle, tflite_path: Path, labels):
    pixels = load_image(tflite_path, name)
    with torch.no_grad():
        logits = classifier(to_unit(pixels))
    assert logits.shape == (1, 1001)
    ours = logits[0].double().numpy()
    assert labels[topk(ours, 1)[0]] == IMAGES[name]
    ref = oracle[name]
    assert topk(ours, 1) == topk(ref, 1)
    assert len(set(topk(ours)) & set(topk(ref))) >= 4
    assert np.corrcoef(ours, ref)[0, 1] > 0.99
    if name == "cat":
        assert set(CAT_TOP3) <= {labels[i] for i in topk(ours)}


def test_converted_classifier_follows_litert(classifier, graph, tflite_path: Path):
    """Against TFLite's own interpreter: same top-1, top-5 sets sharing >= 4, correlated logits."""
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed")
    it = litert.Interpreter(model_path=str(tflite_path), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    t = logits_tensor(graph)
    for name in IMAGES:
        pixels = load_image(tflite_path, name)
        it.set_tensor(it.get_input_details()[0]["index"], pixels[None])
        it.invoke()
        ref = graph.tensors[t].dequantize(it.get_tensor(t))[0]  # the int8 logits fed to SOFTMAX
        with torch.no_grad():
            ours = classifier(to_unit(pixels))[0].double().numpy()
        assert topk(ours, 1) == topk(ref, 1)
        assert len(set(topk(ours)) & set(topk(ref))) >= 4
        assert np.corrcoef(ours, ref)[0, 1] > 0.99


@pytest.mark.parametrize("size", [(224, 224), (320, 256)])
def test_block_outputs_follow_the_integer_graph(size, conversion, graph, tflite_path: Path):
    """Float block outputs stay within the int8 graph's quantization noise (~3-9 % relative).

    Symmetric padding on the stride-2 convolutions, a wrong input scaling or a weight layout
    mix-up gives errors near 100 %. The 320 x 256 case checks the padding at another size.
    """
    pixels = load_image(tflite_path, "bird", size)
    model = tm.MobileNetV2TFLite(conversion.spec)
    model.load_state_dict(conversion.state)
    ref = run_quantized(graph, pixels[None], keep=conversion.block_tensors)
    with torch.no_grad():
        x = model.stem(model.scale_input(to_unit(pixels)))
        for i, block in enumerate(model.blocks):
            x = block(x)
            t = conversion.block_tensors[i]
            expect = graph.tensors[t].dequantize(ref[t])[0]  # (h, w, c)
            got = x[0].permute(1, 2, 0).double().numpy()
            assert got.shape == expect.shape
            rel = np.linalg.norm(got - expect) / np.linalg.norm(expect)
            assert rel < 0.15, (i, rel)


def test_input_scaling_comes_from_the_input_quantization(conversion, graph):
    t = graph.tensors[graph.inputs[0]]
    s, z = float(t.scale[0]), float(t.zero_point[0])
    spec = conversion.spec
    assert spec.input_scale * 0.0 + spec.input_shift == pytest.approx(-s * z)
    assert spec.input_scale * 1.0 + spec.input_shift == pytest.approx(s * (255 - z))
    assert spec.input_shift == pytest.approx(-1.0, abs=0.01)
    assert spec.input_scale == pytest.approx(2.0, abs=1e-4)


def test_architecture_read_from_the_graph(conversion):
    spec = conversion.spec
    assert (spec.stem.out_ch, spec.stem.stride) == (32, 2)
    assert (spec.head.out_ch, spec.num_classes) == (1280, 1001)
    outs = [b.out_ch for b in spec.blocks]
    assert outs == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    assert sum(b.residual for b in spec.blocks) == 10 and spec.blocks[0].expand is None
    assert spec.block_strides()[-1] == 32
    assert tm.MobileNetV2Spec.from_json(spec.to_json()) == spec


def _replace_op(graph, index: int, **changes):
    ops = list(graph.operators)
    ops[index] = dataclasses.replace(ops[index], **changes)
    return dataclasses.replace(graph, operators=tuple(ops))


def test_walk_rejects_a_foreign_graph(graph):
    proj = next(op for op in graph.operators if op.kind == "CONV_2D" and op.options["activation"] == "NONE")
    bad = _replace_op(graph, proj.index, options={**proj.options, "activation": "RELU6"})
    with pytest.raises(ValueError, match=f"operator {proj.index} \\(CONV_2D\\)"):
        tm.convert_graph(bad)
    add = next(op for op in graph.operators if op.kind == "ADD")
    with pytest.raises(ValueError, match="residual ADD"):
        tm.convert_graph(_replace_op(graph, add.index, inputs=(add.inputs[0], add.inputs[0])))
    float_input = dataclasses.replace(graph.tensors[graph.inputs[0]], scale=None, zero_point=None)
    tensors = list(graph.tensors)
    tensors[graph.inputs[0]] = float_input
    with pytest.raises(ValueError, match="only uint8 / int8 RGB inputs"):
        tm.convert_graph(dataclasses.replace(graph, tensors=tuple(tensors)))


def test_walk_accepts_a_global_average_pool(graph, conversion):
    mean = next(op for op in graph.operators if op.kind == "MEAN")
    h, w = graph.tensors[mean.inputs[0]].shape[1:3]
    options = {"padding": "VALID", "stride": (1, 1), "filter": (h, w), "activation": "NONE"}
    pooled = _replace_op(graph, mean.index, kind="AVERAGE_POOL_2D", inputs=mean.inputs[:1], options=options)
    assert tm.convert_graph(pooled).spec == conversion.spec
    options = {**options, "filter": (3, 3)}
    with pytest.raises(ValueError, match="AVERAGE_POOL_2D over the whole"):
        tm.convert_graph(_replace_op(graph, mean.index, kind="AVERAGE_POOL_2D", options=options))


# ------------------------------------------------------------------------------------------ encoder


@pytest.fixture(scope="session")
def encoder(tflite_path: Path) -> tm.MobileNetV2Encoder:
    return build_encoder("mobilenetv2_tflite", weights=str(tflite_path))


@pytest.mark.parametrize("hw", [(256, 256), (320, 256), (256, 320)])
def test_encoder_feature_shapes(hw, encoder):
    assert encoder.channels == (24, 32, 96) and encoder.reductions == (4, 8, 16)
    assert encoder.taps == (2, 5, 12)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        feats = encoder(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, c, hw[0] // r, hw[1] // r) for c, r in zip(encoder.channels, encoder.reductions)
    ]
    assert all(torch.isfinite(f).all() and f.is_contiguous() for f in feats)


def test_encoder_is_frozen(encoder):
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    feats = encoder(x)
    feats[-1].sum().backward()  # gradients reach the input, never the weights
    assert x.grad is not None and all(p.grad is None for p in encoder.parameters())
    encoder.train(True)
    assert not encoder.training


def test_encoder_unnormalises_imagenet_input(encoder, classifier, tflite_path: Path):
    x01 = to_unit(load_image(tflite_path, "cat", (256, 256)))
    mean = torch.tensor(tm.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(tm.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = encoder((x01 - mean) / std)
        h = classifier.stem(classifier.scale_input(x01))
        want = []
        for i, block in enumerate(classifier.blocks[:13]):
            h = block(h)
            if i in (2, 5, 12):
                want.append(h)
    for got, ref in zip(feats, want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_encoder_rejects_bad_input(encoder):
    with pytest.raises(ValueError, match="multiples of 16"):
        encoder(torch.zeros(1, 3, 72, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder(torch.zeros(1, 1, 64, 64))


# ------------------------------------------------------------------------------------------ cache


def test_cache_is_used_then_invalidated_by_another_sha(tflite_path: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv(tm.ENV_CACHE, str(tmp_path / "cache"))
    calls = []
    real_convert = tm.convert_tflite

    def counting_convert(path):
        calls.append(Path(path))
        return real_convert(path)

    monkeypatch.setattr(tm, "convert_tflite", counting_convert)
    first = tm.tflite_mobilenet_v2(tflite_path)
    sha = tm.file_sha256(tflite_path)
    assert len(calls) == 1 and tm.cache_file(sha).is_file()
    second = tm.tflite_mobilenet_v2(tflite_path)
    assert len(calls) == 1  # read back from the cache
    for (k, a), (k2, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert k == k2 and torch.equal(a, b)

    other = tmp_path / "copy.tflite"  # same graph, one trailing byte: another sha256
    other.write_bytes(tflite_path.read_bytes() + b"\0")
    other_sha = tm.file_sha256(other)
    assert other_sha != sha
    tm.tflite_mobilenet_v2(other)
    assert len(calls) == 2 and tm.cache_file(other_sha).is_file()

    shutil.copyfile(tm.cache_file(sha), tm.cache_file(other_sha))  # a file under the wrong key
    tm.tflite_mobilenet_v2(other)
    assert len(calls) == 3  # its recorded sha256 disagrees: converted again
    tm.cache_file(sha).write_bytes(b"not safetensors")
    tm.tflite_mobilenet_v2(tflite_path)
    assert len(calls) == 4
    tm.tflite_mobilenet_v2(tflite_path)
    assert len(calls) == 4


def test_default_path_follows_the_environment(tflite_path: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv(tm.ENV_WEIGHTS, str(tmp_path / "missing.tflite"))
    with pytest.raises(FileNotFoundError, match=tm.ENV_WEIGHTS):
        tm.default_tflite_path()
    copy = tmp_path / "mine.tflite"
    shutil.copyfile(tflite_path, copy)
    monkeypatch.setenv(tm.ENV_WEIGHTS, str(copy))
    assert tm.default_tflite_path() == copy


def test_not_a_tflite_file(tmp_path: Path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="TFL3"):
        read_tflite(junk)
    with pytest.raises(FileNotFoundError):
        tm.tflite_mobilenet_v2(tmp_path / "absent.tflite")
