"""ONNX and OpenVINO export: the scan in standard operators (default ONNX domain only), files that
run in onnxruntime / OpenVINO without torch or this package, the eager fused model's anomaly maps
and scores to 1e-4 relative, the same verdicts, metadata inside the file, clear errors; and
``mk.export_onnx`` for any module on the scan (HSS / GSS blocks, VMamba)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mambaad_kernels as mk
from mambaad.checkpoint import build_model, load_checkpoint
from mambaad.cli import main
from mambaad.deploy import load_deployed
from mambaad.export import MAX_REL_ERR_PORTABLE
from mambaad_kernels.backends import unavailable_reason
from mambaad_kernels.modules import GSSBlock, HSSBlock
from mambaad_kernels.onnx_export import ExportCheckError, foreign_nodes, relative_error
from tests.datagen import tiny_mvtec  # noqa: F401

onnx = pytest.importorskip("onnx", reason="pip install onnx (make test installs the deploy extras)")
ort = pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
ov = pytest.importorskip("openvino", reason="pip install openvino")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
NO_CPU_KERNEL = unavailable_reason("cpu", "cpu")
needs_cpu = pytest.mark.skipif(NO_CPU_KERNEL is not None,
                               reason=f"the eager check runs the compiled cpu backend: {NO_CPU_KERNEL}")


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def deployed(tiny_mvtec, tmp_path_factory):
    """mambaad_test trained 2 steps, evaluated (thresholds), exported to ONNX and OpenVINO."""
    if NO_CPU_KERNEL is not None:
        pytest.skip(f"needs the compiled cpu backend: {NO_CPU_KERNEL}")
    out = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    assert cli("train", "--root", tiny_mvtec, "--dataset", "mvtec", "--categories", "disc", "--model",
               "mambaad_test", "--image-size", SIZE, "--iterations", 2, "--batch-size", 2, "--workers", 0,
               "--output", out / "train") == 0
    ckpt = out / "train" / "last.pt"
    assert cli("eval", "--checkpoint", ckpt, "--output", out / "eval", "--workers", 0) == 0
    assert cli("export", "--checkpoint", ckpt, "--output", out / "model.onnx") == 0  # format by suffix
    assert cli("export", "--checkpoint", ckpt, "--format", "openvino", "--output", out / "model.xml") == 0
    return {"out": out, "root": tiny_mvtec, "ckpt": ckpt, "onnx": out / "model.onnx",
            "xml": out / "model.xml"}


def _eager(ckpt_path, images: torch.Tensor):
    model = build_model(load_checkpoint(str(ckpt_path)), "cpu", "cpu").eval()
    with torch.no_grad():
        out = model(images)
    return out.anomaly_map, out.pred_score


def test_the_onnx_file_holds_only_default_domain_operators(deployed):
    model = onnx.load(str(deployed["onnx"]))
    assert foreign_nodes(model) == []
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Loop", "Scan", "If"}  # the recurrence is unrolled in chunks, no L-step loop
    assert [o.name for o in model.graph.output] == ["anomaly_map", "pred_score"]
    (images,) = model.graph.input
    dims = images.type.tensor_type.shape.dim
    assert dims[0].dim_param  # the batch is symbolic
    assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]


def test_both_files_match_the_eager_fused_model(deployed):
    gen = torch.Generator().manual_seed(5)
    for path in (deployed["onnx"], deployed["xml"]):
        run, meta = load_deployed(str(path))
        for b in (1, 2, 5):
            images = torch.randn(b, 3, SIZE, SIZE, generator=gen)
            amap, score = run(images.numpy())
            want_map, want_score = _eager(deployed["ckpt"], images)
            assert amap.shape == (b, 1, SIZE, SIZE) and amap.dtype == np.float32 and score.shape == (b,)
            assert relative_error(amap, want_map) <= MAX_REL_ERR_PORTABLE
            assert relative_error(score, want_score) <= MAX_REL_ERR_PORTABLE
        assert meta["checked_rel_err"] <= MAX_REL_ERR_PORTABLE


def test_metadata_inside_the_files(deployed):
    ckpt = load_checkpoint(str(deployed["ckpt"]))
    for path, runtime in ((deployed["onnx"], "onnxruntime"), (deployed["xml"], "openvino")):
        _, meta = load_deployed(str(path))
        assert meta["format"] == "mambaad-export" and meta["version"] >= 1 and meta["runtime"] == runtime
        assert meta["image_size"] == SIZE and meta["model_name"] == "mambaad_test"
        assert meta["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
        assert meta["input"]["std"] == pytest.approx([0.229, 0.224, 0.225])
        assert meta["thresholds"]["image"]["all"] == pytest.approx(ckpt["thresholds"]["image"]["all"])
        assert meta["map_range"]["all"] == pytest.approx(ckpt["map_range"]["all"])
    props = {p.key: p.value for p in onnx.load(str(deployed["onnx"])).metadata_props}
    assert json.loads(props["mambaad"])["image_size"] == SIZE


def test_runs_with_onnxruntime_alone_and_openvino_alone(deployed, tmp_path):
    """A fresh process that imports neither torch nor this package runs each file."""
    images = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    scripts = {
        "onnx": ("import numpy as np, onnxruntime as ort\n"
                 f"s = ort.InferenceSession({str(deployed['onnx'])!r}, providers=['CPUExecutionProvider'])\n"
                 f"amap, score = s.run(None, {{'images': np.load({str(tmp_path / 'images.npy')!r})}})\n"),
        "openvino": ("import numpy as np, openvino as ov\n"
                     f"m = ov.Core().compile_model({str(deployed['xml'])!r}, 'CPU', "
                     "{'INFERENCE_PRECISION_HINT': 'f32'})\n"
                     f"amap, score = m(np.load({str(tmp_path / 'images.npy')!r})).values()\n"),
    }
    want_map, _ = _eager(deployed["ckpt"], torch.from_numpy(images))
    for name, script in scripts.items():
        script += (f"np.save({str(tmp_path / name)!r} + '_map.npy', amap)\n"
                   "import sys\n"
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mambaad', "
                   "'mambaad_kernels')))\n")
        res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, env=dict(os.environ, PYTHONPATH=""))
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout  # neither torch nor ours imported
        amap = np.load(tmp_path / f"{name}_map.npy")
        assert relative_error(amap, want_map) <= MAX_REL_ERR_PORTABLE


def test_predict_with_each_file_matches_the_checkpoint(deployed):
    folder = os.path.join(deployed["root"], "disc", "test")
    images = [os.path.join(folder, d) for d in ("good", "spot", "scratch")]
    out = deployed["out"]
    bad = out / "broken.png"
    bad.write_bytes(b"not an image")
    assert cli("predict", "--checkpoint", deployed["ckpt"], "--output", out / "pred_ckpt", "--backend", "cpu",
               *images, bad) == 0
    want = json.loads((out / "pred_ckpt" / "predictions.json").read_text())
    assert sum(r["error"] is not None for r in want) == 1 and len(want) > 3
    for key in ("onnx", "xml"):
        assert cli("predict", "--model", deployed[key], "--output", out / f"pred_{key}", *images, bad) == 0
        got = json.loads((out / f"pred_{key}" / "predictions.json").read_text())
        assert [r["image"] for r in got] == [r["image"] for r in want]
        assert os.path.isfile(out / f"pred_{key}" / "predictions.csv")
        for rg, rw in zip(got, want):
            if rw["error"] is not None:
                assert rg["error"] and rg["score"] is None and rg["heatmap"] is None
                continue
            assert rg["error"] is None and os.path.isfile(rg["heatmap"])
            assert rg["score"] == pytest.approx(rw["score"], rel=MAX_REL_ERR_PORTABLE)
            assert rg["threshold"] == pytest.approx(rw["threshold"]) and rg["threshold"] is not None
            assert rg["anomalous"] == rw["anomalous"]  # the same verdicts with the stored threshold


def test_clear_errors(deployed, tmp_path, capsys, monkeypatch):
    image = os.path.join(deployed["root"], "disc", "test", "good", "000.png")
    # an ONNX file without our metadata
    plain = tmp_path / "plain.onnx"
    model = onnx.load(str(deployed["onnx"]))
    del model.metadata_props[:]
    onnx.save_model(model, str(plain))
    assert cli("predict", "--model", plain, "--output", tmp_path, image) == 2
    assert "not a model of mambaad export" in capsys.readouterr().err
    # a wrong size
    assert cli("predict", "--model", deployed["onnx"], "--image-size", 96, "--output", tmp_path, image) == 2
    assert "runs 64 x 64 images only" in capsys.readouterr().err
    # not an ONNX file at all
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert cli("predict", "--model", tmp_path / "junk.onnx", "--output", tmp_path, image) == 2
    assert "cannot read exported model" in capsys.readouterr().err
    # format and suffix disagree; OpenVINO without .xml
    ckpt = deployed["ckpt"]
    assert cli("export", "--checkpoint", ckpt, "--format", "onnx", "--output", tmp_path / "m.pt2") == 2
    assert "does not match" in capsys.readouterr().err
    assert cli("export", "--checkpoint", ckpt, "--format", "openvino", "--output", tmp_path / "m") == 2
    assert "name the output FILE.xml" in capsys.readouterr().err
    # a missing runtime package names the fix
    for module, path in (("onnxruntime", deployed["onnx"]), ("openvino", deployed["xml"])):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
        assert cli("predict", "--model", path, "--output", tmp_path, image) == 2
        assert f"pip install {module}" in capsys.readouterr().err
        monkeypatch.delitem(sys.modules, module)


@needs_cpu
def test_export_refuses_a_file_that_misses_the_check(deployed, tmp_path, capsys, monkeypatch):
    from mambaad import deploy

    monkeypatch.setattr(deploy, "MAX_REL_ERR_PORTABLE", 0.0)  # no formulation matches bit for bit
    assert cli("export", "--checkpoint", deployed["ckpt"], "--output", tmp_path / "m.onnx") == 2
    assert "differs from the checkpoint's" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


@needs_cpu
@pytest.mark.parametrize("cls", [HSSBlock, GSSBlock])
def test_export_onnx_of_a_block(cls, tmp_path):
    torch.manual_seed(1)
    block = cls(16, backend="cpu").train()
    x = torch.randn(1, 5, 9, 16)  # odd grid, batch 1 (traced at 2, checked at 1 and 3)
    info = mk.export_onnx(block, x, tmp_path / "block.onnx")
    assert info["scans"] == 1 and info["checked_batches"] == [1, 3] and info["max_rel_err"] <= 1e-4
    assert block.training and block.self_attention.backend == "cpu"  # restored
    session = ort.InferenceSession(str(tmp_path / "block.onnx"), providers=["CPUExecutionProvider"])
    x2 = torch.randn(4, 5, 9, 16)
    with torch.no_grad():
        want = block.eval()(x2)
    (got,) = session.run(None, {session.get_inputs()[0].name: x2.numpy()})
    assert relative_error(got, want) <= 1e-4


def test_export_onnx_raises_on_a_miss_and_removes_the_file(tmp_path):
    block = HSSBlock(8, backend="portable")
    with pytest.raises(ExportCheckError, match="differs from the module's"):
        mk.export_onnx(block, torch.randn(2, 4, 4, 8), tmp_path / "b.onnx", max_rel_err=-1.0)
    assert not (tmp_path / "b.onnx").exists()


def test_export_onnx_names_a_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match="pip install onnxscript"):
        mk.export_onnx(HSSBlock(8), torch.randn(1, 4, 4, 8), tmp_path / "b.onnx")


def test_export_onnx_refuses_bad_examples(tmp_path):
    with pytest.raises(TypeError, match="example must be a tensor"):
        mk.export_onnx(HSSBlock(8), [1, 2], tmp_path / "b.onnx")
    with pytest.raises(ValueError, match="same batch size"):
        mk.export_onnx(torch.nn.Bilinear(3, 4, 5), (torch.randn(2, 3), torch.randn(3, 4)),
                       tmp_path / "b.onnx")


@needs_cpu
def test_vmamba_classifier_and_block_export(tmp_path):
    from mambaad_kernels.vmamba import VSSM, VSSBlock

    torch.manual_seed(2)
    model = VSSM(depths=[1, 1], dims=[16, 32], num_classes=10, backend="cpu").eval()
    info = mk.export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "vssm.onnx")  # logits checked
    assert info["scans"] == 2 and info["max_rel_err"] <= 1e-4
    assert foreign_nodes(onnx.load(str(tmp_path / "vssm.onnx"))) == []
    block = VSSBlock(hidden_dim=16, ssm_d_state=4, backend="cpu")
    info = mk.export_onnx(block, torch.randn(2, 6, 5, 16), tmp_path / "vss_block.onnx")
    assert info["scans"] == 1 and info["max_rel_err"] <= 1e-4


def test_the_graph_grows_slower_than_the_sequence(tmp_path):
    """T steps per chunk pass, T near 2 sqrt(L): 16x the sequence, about 4x the nodes, not 16x."""
    sizes = {}
    for hw in (4, 16):
        block = HSSBlock(8, backend="portable")
        info = mk.export_onnx(block, torch.randn(1, hw, hw, 8), tmp_path / f"b{hw}.onnx")
        sizes[hw] = info["nodes"]
    assert sizes[16] < 6 * sizes[4], sizes
