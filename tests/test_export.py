"""``litvit export``: ONNX with dynamic batch and image size, onnxruntime against PyTorch to 1e-4."""
import pytest

import litvit
from litvit.cli import main
from litvit.tools.export import check_onnx, export_onnx

from helpers import TINY, randomize_

pytestmark = pytest.mark.unit

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SMALL = dict(TINY, depths=(1, 1, 1, 1))


@pytest.mark.slow
def test_onnx_round_trip_dynamic_batch_and_size(tmp_path):
    """LIT-Ti (DTM with offsets that leave the map, absolute position embeddings resized in the
    graph, class token) exported once at 64 px, run at other batch sizes and sizes."""
    model = randomize_(litvit.create_model("lit_ti", num_classes=7, **SMALL), offset_scale=1.0).eval()
    path = export_onnx(model, str(tmp_path / "lit_ti.onnx"), img_size=64, opset=17)
    import onnx
    proto = onnx.load(path)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert any(n.op_type == "GridSample" for n in proto.graph.node)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str) and dims[1] == 3
    results = check_onnx(model, path, shapes=[(1, 64, 64), (3, 96, 64), (2, 32, 128)], atol=1e-4, rtol=1e-4)
    assert all(r["max_abs_diff"] < 1e-4 for r in results)


@pytest.mark.slow
def test_onnx_litv2_non_square_sizes(tmp_path):
    """LITv2 (HiLo windows and pooled keys reshaped from the run-time size) exported once, run at
    other batch sizes and non-square sizes."""
    model = randomize_(litvit.create_model("litv2_s", num_classes=7, **SMALL), offset_scale=1.0).eval()
    path = export_onnx(model, str(tmp_path / "litv2_s.onnx"), img_size=64, opset=17)
    results = check_onnx(model, path, shapes=[(1, 64, 64), (3, 96, 64), (2, 32, 128)], atol=1e-4, rtol=1e-4)
    assert all(r["max_abs_diff"] < 1e-4 for r in results)


@pytest.mark.cli
def test_export_cli_errors(tmp_path, capsys):
    assert main(["export", "--model", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert main(["export", "--opset", "13", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "'13' is not an integer in [17," in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
