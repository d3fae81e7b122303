import warnings

import pytest
import torch

from vggnet.inference import InferenceNet, quantize_int8
from vggnet.model import build_model, fold_batchnorm, to_dense


@pytest.fixture(scope="module")
def bn_model():
    torch.manual_seed(0)
    model = build_model("A", batch_norm=True, num_classes=10, head="cifar", width=1 / 8, init="glorot").eval()
    for m in model.modules():   # running statistics far from the identity, so that folding has work to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_fold_batchnorm_keeps_outputs_and_names(bn_model):
    x = torch.randn(8, 3, 32, 32)
    folded = fold_batchnorm(bn_model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert len(folded.features) == len(bn_model.features) and folded.feature_names == bn_model.feature_names
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn_model(x), atol=1e-5, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn_model.modules())   # the original is untouched


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 0.03), ("int8", 0.08)])
def test_precisions_track_fp32(bn_model, precision, tol):
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        ref = bn_model(x)
    out = InferenceNet(bn_model, precision, [x[:32]])(x)
    assert out.dtype == torch.float32 and out.shape == (64, 10)
    assert (out - ref).abs().max() <= tol * ref.abs().max()


def test_int8_really_runs_quantized_kernels(bn_model):
    q = quantize_int8(bn_model, [torch.randn(16, 3, 32, 32)])
    kinds = {type(m).__module__ for m in q.modules()}
    assert any(k.startswith("torch.ao.nn.quantized") for k in kinds)
    dense = quantize_int8(to_dense(bn_model), [torch.randn(4, 3, 64, 64)])
    assert dense(torch.randn(2, 3, 64, 64)).shape == (2, 10)            # any input size, as section 3.2


def test_bad_precision_and_missing_calibration(bn_model):
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        InferenceNet(bn_model, "fp8")
    with pytest.raises(ValueError, match="fp16 scoring is for GPUs; on the CPU use bf16"):
        InferenceNet(bn_model, "fp16")                     # a GPU precision, refused on the CPU
    with pytest.raises(ValueError, match="int8 scoring is a CPU feature .*use --device cpu"):
        InferenceNet(bn_model, "int8", device="meta")
    with pytest.raises(ValueError, match="at least one calibration batch"):
        InferenceNet(bn_model, "int8")


def test_compiled_net_matches_eager_at_each_input_size(bn_model):
    dense = to_dense(bn_model).eval()
    eager, compiled = InferenceNet(dense, "fp32"), InferenceNet(dense, "fp32", compile=True)
    assert compiled.compiled and not eager.compiled
    for size in (32, 48):   # a new input size compiles anew (static shapes), still the same scores
        x = torch.randn(4, 3, size, size)
        torch.testing.assert_close(compiled(x), eager(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="not int8"):
        InferenceNet(bn_model, "int8", [torch.randn(4, 3, 32, 32)], compile=True)


def test_bf16_warns_only_where_the_cpu_lacks_it(bn_model, monkeypatch):
    monkeypatch.setattr("vggnet.runtime.bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="bf16 on a CPU without native bf16 .* use fp32 here"):
        InferenceNet(bn_model, "bf16")
    monkeypatch.setattr("vggnet.runtime.bf16_supported", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InferenceNet(bn_model, "bf16")
        InferenceNet(bn_model, "fp32")
