"""``mambaad export``: a torch.export program of a trained checkpoint, with every fused scan as one
``mambaad::hss_scan`` node, a dynamic batch dimension, loadable in a fresh process that imports only
mambaad_kernels, and the checkpoint's anomaly maps (relative error <= 1e-5, fp32, CPU); ``mambaad
predict --model`` runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mambaad.anomaly import AnomalyOutput
from mambaad.checkpoint import build_model, load_checkpoint
from mambaad.cli import main
from mambaad.export import MAX_REL_ERR, ExportError, export_model, load_exported, relative_error
from mambaad_kernels.backends import unavailable_reason
from tests.datagen import tiny_mvtec  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
NO_CPU_KERNEL = unavailable_reason("cpu", "cpu")
pytestmark = pytest.mark.skipif(NO_CPU_KERNEL is not None,
                                reason=f"export needs the compiled cpu backend: {NO_CPU_KERNEL}")


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def exported(tiny_mvtec, tmp_path_factory):
    """Train mambaad_test 2 steps, evaluate it (thresholds), export it."""
    out = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    assert cli("train", "--root", tiny_mvtec, "--dataset", "mvtec", "--categories", "disc", "--model",
               "mambaad_test", "--image-size", SIZE, "--iterations", 2, "--batch-size", 2, "--workers", 0,
               "--output", out / "train") == 0
    ckpt = out / "train" / "last.pt"
    assert cli("eval", "--checkpoint", ckpt, "--output", out / "eval", "--workers", 0) == 0
    assert cli("export", "--checkpoint", ckpt, "--output", out / "model.pt2") == 0
    return {"out": out, "root": tiny_mvtec, "ckpt": ckpt, "pt2": out / "model.pt2"}


def _eager(ckpt_path, images: torch.Tensor) -> torch.Tensor:
    model = build_model(load_checkpoint(str(ckpt_path)), "cpu", "cpu")
    with torch.no_grad():
        return model(images).anomaly_map


def test_every_scan_is_one_op_node_and_the_batch_is_symbolic(exported):
    program = torch.export.load(str(exported["pt2"]))
    graph = program.graph_module.graph
    op = torch.ops.mambaad.hss_scan.default
    scans = [n for n in graph.nodes if n.op == "call_function" and n.target is op]
    model = build_model(load_checkpoint(str(exported["ckpt"])), "cpu", "cpu")
    n_ss2d = sum(type(m).__name__ == "SS2D" for m in model.modules())
    assert n_ss2d > 0 and len(scans) == n_ss2d
    # nothing of the scan leaked out as other ops: no kernel op, no nested graphs
    kernel_ops = [n for n in graph.nodes if n.op == "call_function" and "mambaad" in str(n.target)
                  and n.target is not op]
    assert kernel_ops == []
    assert [m for m in program.graph_module.children() if isinstance(m, torch.fx.GraphModule)] == []
    for node in scans:
        assert node.args[7] == "cpu"  # the backend argument
        x = node.args[0].meta["val"]
        assert isinstance(x.shape[0], torch.SymInt), x.shape
    (images,) = [n for n in graph.nodes if n.op == "placeholder" and n.name == "images"]
    assert isinstance(images.meta["val"].shape[0], torch.SymInt)
    assert tuple(images.meta["val"].shape[1:]) == (3, SIZE, SIZE)


def test_loads_in_a_fresh_process_importing_only_mambaad_kernels(exported, tmp_path):
    batches = [torch.randn(b, 3, SIZE, SIZE) for b in (1, 3, 4)]  # the example batch was 2
    torch.save(batches, tmp_path / "inputs.pt")
    script = (
        "import sys, torch, mambaad_kernels\n"
        f"program = torch.export.load({str(exported['pt2'])!r})\n"
        f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        "run = program.module()\n"
        "with torch.no_grad():\n"
        "    outs = [run(x) for x in inputs]\n"
        "assert all(isinstance(o, tuple) and len(o) == 2 for o in outs)\n"
        f"torch.save([list(o) for o in outs], {str(tmp_path / 'outputs.pt')!r})\n"
        "print(sorted(m for m in sys.modules if m == 'mambaad' or m.startswith('mambaad.')))\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"  # the model package was never imported
    outs = torch.load(tmp_path / "outputs.pt")
    for images, (amap, score) in zip(batches, outs):
        want = _eager(exported["ckpt"], images)
        assert amap.shape == want.shape == (images.shape[0], 1, SIZE, SIZE) and amap.dtype == torch.float32
        assert relative_error(amap, want) <= MAX_REL_ERR
        torch.testing.assert_close(score, want.flatten(1).amax(1), rtol=1e-5, atol=0)


def test_metadata_carries_size_normalisation_and_thresholds(exported):
    program, meta = load_exported(str(exported["pt2"]))
    ckpt = load_checkpoint(str(exported["ckpt"]))
    assert meta["image_size"] == SIZE and meta["model_name"] == "mambaad_test" and meta["backend"] == "cpu"
    assert meta["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["thresholds"]["image"]["all"] == pytest.approx(ckpt["thresholds"]["image"]["all"])
    assert meta["map_range"]["all"] == pytest.approx(ckpt["map_range"]["all"])
    assert meta["checked_rel_err"] <= MAX_REL_ERR and meta["torch"] == torch.__version__


def test_predict_with_the_model_matches_the_checkpoint(exported):
    folder = os.path.join(exported["root"], "disc", "test", "spot")
    out = exported["out"]
    assert cli("predict", "--checkpoint", exported["ckpt"], "--output", out / "pred_ckpt", "--backend", "cpu",
               folder) == 0
    assert cli("predict", "--model", exported["pt2"], "--output", out / "pred_pt2", folder) == 0
    a = json.loads((out / "pred_ckpt" / "predictions.json").read_text())
    b = json.loads((out / "pred_pt2" / "predictions.json").read_text())
    assert [r["image"] for r in a] == [r["image"] for r in b] and len(a) == 3
    for ra, rb in zip(a, b):
        assert rb["error"] is None and os.path.isfile(rb["heatmap"])
        assert rb["score"] == pytest.approx(ra["score"], rel=1e-5)
        assert rb["threshold"] == pytest.approx(ra["threshold"]) and rb["threshold"] is not None
        assert rb["anomalous"] == ra["anomalous"]


def test_clear_errors(exported, tmp_path, capsys):
    image = os.path.join(exported["root"], "disc", "test", "good", "000.png")
    assert cli("predict", "--model", exported["ckpt"], "--output", tmp_path, image) == 2
    assert "cannot read exported model" in capsys.readouterr().err
    assert cli("predict", "--model", exported["pt2"], "--image-size", 96, "--output", tmp_path, image) == 2
    assert "runs 64 x 64 images only" in capsys.readouterr().err
    assert cli("predict", "--model", exported["pt2"], "--checkpoint", exported["ckpt"], "--output", tmp_path,
               image) == 2
    assert "not both" in capsys.readouterr().err
    assert cli("export", "--checkpoint", tmp_path / "none.pt", "--output", tmp_path / "m.pt2") == 2
    assert "checkpoint not found" in capsys.readouterr().err


class _NoScan(torch.nn.Module):
    """A model of the right contract without any scan (as one on the reference backend has none)."""

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        amap = images.mean(1, keepdim=True)
        return AnomalyOutput(amap, amap.flatten(1).amax(1))


def test_a_graph_without_the_scan_op_is_refused():
    with pytest.raises(ExportError, match="no mambaad::hss_scan node"):
        export_model(_NoScan(), SIZE)


def test_help_names_the_flags(capsys):
    for command, flags in (("export", ["--checkpoint", "--output", "--config"]),
                           ("predict", ["--model", "--strict", "--checkpoint"])):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert all(f in text for f in flags), (command, text)
