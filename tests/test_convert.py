import pickle

import pytest
import torch

from vggnet.convert import convert_torchvision
from vggnet.weights import WeightsError, load_weights


def test_torchvision_conversion(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    theirs = torchvision.models.vgg11_bn().eval()
    torch.save(theirs.state_dict(), tmp_path / "vgg11_bn.pth")
    out = convert_torchvision(tmp_path / "vgg11_bn.pth", tmp_path / "vgg11_bn.safetensors")
    ours, meta = load_weights(out)
    assert (meta.config, meta.batch_norm, meta.num_classes) == ("A", True, 1000)
    assert meta.classes[0] == "tench" and meta.wnids[0] == "n01440764" and meta.std == [58.395, 57.12, 57.375]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"features.0.weight": _Evil()}, fh)
    with pytest.raises(WeightsError, match="refused or unreadable as plain weights"):
        convert_torchvision(tmp_path / "evil.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(WeightsError, match="not a safetensors weights file.*vggnet convert"):
        load_weights(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()
