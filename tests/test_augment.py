import torch

from vggnet import augment as A


def test_random_crop_flip_windows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    assert torch.equal(A.random_crop_flip(x, 0, False, g), x)
    out = A.random_crop_flip(x, 2, False, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2,) * 4, mode="reflect")
    shifts = set()
    for i in range(64):
        match = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], out[i])]
        assert match, "every output is a window of the padded image"
        shifts.add(match[0])
    assert len(shifts) > 10
    flipped = A.random_crop_flip(x, 0, True, g)
    same = [torch.equal(flipped[i], x[i]) for i in range(64)]
    mirrored = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(64)]
    assert all(a or b for a, b in zip(same, mirrored)) and 15 < sum(mirrored) < 49


def test_cutout_zeroes_one_square_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, 16, 16).abs() + 1.0          # no zero before Cutout
    out = A.cutout(x, 6, g)
    holes = out == 0
    assert torch.equal(holes[:, 0], holes[:, 1]) and torch.equal(holes[:, 0], holes[:, 2])   # all channels
    torch.testing.assert_close(out[~holes], x[~holes], rtol=0, atol=0)
    areas = holes[:, 0].sum((1, 2))
    assert areas.max() == 36 and areas.min() >= 9         # 6x6 inside, clipped to 3x3 at worst
    for m in holes[:, 0]:                                  # each hole is one axis-aligned rectangle
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert m.sum() == len(rows) * len(cols) and rows.max() - rows.min() + 1 == len(rows)
    assert (areas == 36).sum() > 50                        # centres spread: many squares fully inside
    assert torch.equal(A.cutout(x, 6, torch.Generator().manual_seed(1)),
                       A.cutout(x, 6, torch.Generator().manual_seed(1)))


def test_scale_jitter_draws_s_in_range(monkeypatch):
    seen = []
    original = A.rescale
    monkeypatch.setattr(A, "rescale", lambda x, q: (seen.append(q), original(x, q))[1])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (64, 3, 32, 32), dtype=torch.uint8)
    out = A.scale_jitter_crop(images, 32, 48, 32, g)
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.uint8
    assert all(32 <= q <= 48 for q in seen) and len(set(seen)) > 8


def test_pca_lighting_keeps_the_mean_and_follows_the_eigenvectors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20000, 3, generator=g) @ torch.tensor([[40.0, 30, 20], [0, 20, 10], [0, 0, 5]])
    images = (base + 120).clamp(0, 255).to(torch.uint8).T.reshape(3, 200, 100).permute(1, 0, 2)[..., None]
    stats = A.pca_lighting_stats(images)
    vec = torch.tensor(stats["eigvec"])
    torch.testing.assert_close(vec.T @ vec, torch.eye(3), atol=1e-5, rtol=0)
    assert stats["eigval"] == sorted(stats["eigval"]) and stats["eigval"][0] > 0
    x = torch.full((4000, 3, 2, 2), 100.0)
    shifted = A.pca_lighting(x, stats, 0.1, torch.Generator().manual_seed(1))
    shift = (shifted - x)[:, :, 0, 0]                                 # (N, 3), the same on every pixel
    assert torch.equal(shifted[:, :, 1, 1], shifted[:, :, 0, 0])
    torch.testing.assert_close(shift.mean(0), torch.zeros(3), atol=0.05 * max(stats["eigval"]) ** 0.5 + 1.0, rtol=0)
    alpha = (shift @ vec) / torch.tensor(stats["eigval"])              # coordinates on the components
    torch.testing.assert_close(alpha.std(0), torch.full((3,), 0.1), atol=0.01, rtol=0)
