import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("VGGNET_TEST_THREADS", min(2, os.cpu_count() or 1))))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes its tensor caches into a temporary folder, never the user's."""
    monkeypatch.setenv("VGGNET_CACHE", str(tmp_path_factory.mktemp("cache")))


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A small train/test image folder of learnable JPEGs: class k is a bright band at row k."""
    from torchvision.io import encode_jpeg

    g = torch.Generator().manual_seed(seed)
    for split in ("train", "test"):
        for k in range(classes):
            d = root / split / f"class{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = (torch.rand(3, size, size, generator=g) * 60).to(torch.uint8)
                band = slice(k * size // classes, (k + 1) * size // classes)
                img[:, band, :] += 180
                (d / f"{i:04d}.jpg").write_bytes(encode_jpeg(img, quality=95).numpy().tobytes())
    return root
