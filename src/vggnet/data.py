"""Data: image folders and the CIFAR-10 archive, decoded once into uint8 tensors.

Small data sets (CIFAR scale) live in memory as one (N, 3, H, W) uint8 tensor,
cached on disk as safetensors keyed by the folder listing, and batches are index
slices augmented as whole tensors (airbench style). Preprocessing is the paper's
(section 2.1): subtract the mean RGB of the training set, optionally divide by the std.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import resize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_LOCATIONS = ("data/cifar10", "data/cifar10-jpeg", "../shared/data/cifar10-jpeg")


class DataError(ValueError):
    """Bad or missing data; the message names the path and what to do."""


@dataclass
class TensorData:
    """A decoded data set: images (N, 3, H, W) uint8, labels (N,) int64, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    skipped: list[str] = field(default_factory=list)   # unreadable files left out (--skip-bad)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "TensorData":
        return TensorData(self.images[index], self.labels[index], self.classes, self.skipped)


def _is_dataset_root(path: Path) -> bool:
    return (path / "train").is_dir() or (path / "cifar-10-python.tar.gz").is_file()


def find_data(path: str | os.PathLike | None = None) -> Path:
    """The data set root: ``path``, else $VGGNET_DATA (the root or a folder holding
    ``cifar10-jpeg``), else the default locations; DataError listing where it looked."""
    tried: list[Path] = []
    candidates: list[Path] = []
    if path is not None:
        candidates.append(Path(path))
    elif os.environ.get("VGGNET_DATA"):
        env = Path(os.environ["VGGNET_DATA"])
        candidates += [env, env / "cifar10-jpeg", env / "cifar10"]
    else:
        candidates += [Path(p) for p in DEFAULT_LOCATIONS]
    for cand in candidates:
        tried.append(cand.resolve())
        if _is_dataset_root(cand) or cand.name.endswith(".tar.gz") and cand.is_file():
            return cand
    looked = ", ".join(str(t) for t in tried)
    raise DataError(f"no data set found (looked in: {looked}); point at a folder with train/<class>/ "
                    "images or cifar-10-python.tar.gz with --data PATH or VGGNET_DATA, or pass --download")


def list_image_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """Files of ``root/<class>/*`` as (path, class index), classes sorted by name (the
    ImageNet convention: index = position in the sorted folder names)."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    items: list[tuple[Path, int]] = []
    empty = []
    for idx, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            empty.append(name)
        items += [(p, idx) for p in files]
    if empty:
        raise DataError(f"{root}: class folders without images: {', '.join(empty)}")
    return items, classes


def read_image(path: Path) -> torch.Tensor:
    """Any image file as (3, H, W) uint8 RGB: grayscale, alpha, palette, 16-bit and CMYK
    files are converted; a DataError names a file that cannot be decoded."""
    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        image = decode_image(data, mode=ImageReadMode.RGB)
    except Exception as exc:  # torchvision raises RuntimeError for corrupt files
        return _read_with_pil(path, exc)
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def _read_with_pil(path: Path, first_error: Exception) -> torch.Tensor:
    """Fallback for formats torchvision does not decode (CMYK JPEG on some builds, GIF, TIFF)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = img.point(lambda v: v / 256).convert("L")
            rgb = img.convert("RGB")
    except Exception as exc:
        raise DataError(f"{path}: cannot decode image ({exc or first_error})") from None
    return torch.from_numpy(__import__("numpy").asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def _listing_key(items: list[tuple[Path, int]]) -> str:
    """A hash of every file's name, size and mtime: a changed folder gets a new cache."""
    h = hashlib.sha1()
    for path, label in items:
        st = path.stat()
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("VGGNET_CACHE", Path.home() / ".cache" / "vggnet"))


def reject_bad(bad: list[tuple[Path, str]], skip_bad: bool) -> list[str]:
    """Stop with every unreadable file named, or (``skip_bad``) return them to be listed."""
    if bad and not skip_bad:
        listing = "; ".join(f"{p}: {why}" for p, why in bad[:20])
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        raise DataError(f"{len(bad)} unreadable image(s): {listing}{more}; fix or remove them, or pass --skip-bad")
    return [str(p) for p, _ in bad]


def scan_images(items: list[tuple[Path, int]]) -> list[tuple[Path, str]]:
    """A fast pre-scan (PIL reads headers and verifies the data) of files to stream."""
    from PIL import Image
    bad = []
    for path, _ in items:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as exc:  # PIL raises many types for broken files
            bad.append((path, str(exc) or type(exc).__name__))
    return bad


def load_folder_tensors(root: Path, use_cache: bool = True, skip_bad: bool = False) -> TensorData:
    """Decode every image of ``root/<class>/`` once into a uint8 tensor (all the same size),
    cached as safetensors keyed by the listing; unreadable files stop the load, naming
    every one, or are left out with ``skip_bad``."""
    items, classes = list_image_folder(root)
    key = _listing_key(items)
    cached = cache_dir() / f"{root.resolve().name}-{key}.safetensors"
    if use_cache and cached.is_file():
        tensors = load_file(cached)
        skipped = json.loads(tensors.get("skipped_json", torch.zeros(0, dtype=torch.uint8)).numpy().tobytes() or b"[]")
        return TensorData(tensors["images"], tensors["labels"], classes, skipped)
    images, bad, good = [], [], []
    for path, label in items:
        try:
            images.append(read_image(path))
            good.append((path, label))
        except DataError as exc:
            bad.append((path, str(exc).split(": ", 1)[-1]))
    skipped = reject_bad(bad, skip_bad)
    items = good
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise DataError(f"{root}: images have different sizes {sorted(shapes)[:3]}...; "
                        "use the streaming loader for such data sets")
    data = TensorData(torch.stack(images), torch.tensor([y for _, y in items], dtype=torch.int64), classes, skipped)
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")   # ranks may build it at the same time
        skipped_json = torch.frombuffer(bytearray(json.dumps(skipped).encode()), dtype=torch.uint8)
        save_file({"images": data.images, "labels": data.labels, "skipped_json": skipped_json}, str(tmp))
        os.replace(tmp, cached)
    return data


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles: allow only what numpy arrays need, never arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name} from the CIFAR archive")
        return super().find_class(module, name)


def load_cifar_archive(archive: Path) -> tuple[TensorData, TensorData]:
    """(train, test) from the official ``cifar-10-python.tar.gz``."""
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    with tarfile.open(archive, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            base = Path(member.name).name
            split = "train" if base.startswith("data_batch") else "test" if base == "test_batch" else None
            if split:
                fh = tar.extractfile(member)
                assert fh is not None
                splits[split].append(_NumpyOnlyUnpickler(fh, encoding="bytes").load())
    if not splits["train"] or not splits["test"]:
        raise DataError(f"{archive}: not a CIFAR-10 python archive (no data_batch_* / test_batch)")

    def stack(batches: list[dict]) -> TensorData:
        images = torch.cat([torch.from_numpy(b[b"data"]).reshape(-1, 3, 32, 32) for b in batches])
        labels = torch.cat([torch.tensor(b[b"labels"], dtype=torch.int64) for b in batches])
        return TensorData(images.contiguous(), labels, list(CIFAR10_CLASSES))

    return stack(splits["train"]), stack(splits["test"])


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str) -> Path:
    """Fetch ``url`` to ``dest`` (via a temporary name) and check its MD5; a bad file is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    got = md5sum(tmp)
    if got != md5:
        tmp.unlink()
        raise DataError(f"{url}: MD5 mismatch (got {got}, expected {md5}); the download was removed")
    os.replace(tmp, dest)
    return dest


def fits_in_memory(items: list[tuple[Path, int]], budget_bytes: int = 4 << 30, probe: int = 16) -> bool:
    """Whether a folder can be decoded once into one tensor: the first images share a size
    and all of them at that size fit in ``budget_bytes``."""
    shapes = set()
    for p, _ in items[:probe]:
        try:
            shapes.add(tuple(read_image(p).shape))
        except DataError:
            continue
    if len(shapes) != 1:
        return False
    c, h, w = shapes.pop()
    return len(items) * c * h * w <= budget_bytes


def load_dataset(path: str | os.PathLike | None = None, download_to: Path | None = None,
                 url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                 stream: bool | None = None,
                 skip_bad: bool = False) -> tuple["TensorData | StreamingImages", "TensorData | StreamingImages"]:
    """(train, test) from a folder with train/ and test/ image folders or the CIFAR archive;
    ``download_to`` fetches the official CIFAR-10 archive first. Folders that do not fit
    in memory (or ``stream=True``) are read image by image (:class:`StreamingImages`)."""
    if download_to is not None:
        root = download(url, Path(download_to) / "cifar-10-python.tar.gz", md5)
    else:
        root = find_data(path)
    archive = root if root.is_file() else root / "cifar-10-python.tar.gz"
    if archive.is_file() and not (root.is_dir() and (root / "train").is_dir()):
        return load_cifar_archive(archive)
    if not (root / "test").is_dir():
        raise DataError(f"{root}: no test/ folder beside train/ (expected {root}/test/<class>/<image>)")
    (train_items, classes), (test_items, test_classes) = list_image_folder(root / "train"), list_image_folder(root / "test")
    if classes != test_classes:
        raise DataError(f"{root}: train and test have different classes")
    if stream is None:
        stream = not fits_in_memory(train_items)
    if stream:
        bad = scan_images(train_items) + scan_images(test_items)
        skipped = set(reject_bad(bad, skip_bad))
        train = StreamingImages([it for it in train_items if str(it[0]) not in skipped], classes, 224, (256, 256), True)
        test = StreamingImages([it for it in test_items if str(it[0]) not in skipped], classes, 224, (256, 256), False)
        train.skipped = sorted(skipped)
        return train, test
    train, test = load_folder_tensors(root / "train", skip_bad=skip_bad), load_folder_tensors(root / "test", skip_bad=skip_bad)
    train.skipped = train.skipped + test.skipped
    return train, test


def split_validation(data: TensorData, size: int, seed: int) -> tuple[TensorData, TensorData]:
    """(train, validation): ``size`` images held out by a seeded permutation."""
    if not 0 <= size < len(data):
        raise DataError(f"validation size {size} must be below the {len(data)} training images")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[size:].sort().values), data.subset(perm[:size].sort().values)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and std per RGB channel on the 0..255 scale (section 2.1: mean RGB subtraction)."""
    x = images.to(torch.float64)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def normalize(images: torch.Tensor, mean: list[float], std: list[float] | None) -> torch.Tensor:
    """(N, 3, H, W) on the 0..255 scale -> float32, mean RGB subtracted, divided by std when given."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std if std else [1.0, 1.0, 1.0], dtype=torch.float32).view(1, 3, 1, 1)
    return (images.to(torch.float32) - m) / s


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched augmentation: a random crop of the original size from the reflect-padded
    batch and a random horizontal flip, one gather for the whole batch."""
    n, c, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]     # (n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]     # (n, 1, 1, w)
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Batched Cutout (DeVries & Taylor, 2017): a ``size`` x ``size`` square at a uniformly
    drawn centre of each mean-subtracted image set to 0, the mean colour; squares may be
    clipped by the border. Not in the paper: a regulariser for short CIFAR schedules."""
    n, _, h, w = x.shape
    top = torch.randint(0, h, (n,), generator=generator) - size // 2
    left = torch.randint(0, w, (n,), generator=generator) - size // 2
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)        # (n, h)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)      # (n, w)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]           # (n, 1, h, w)
    return x.masked_fill(hole, 0.0)


# ---- the paper's training-time transforms (section 3.1), batched on tensors ----------------
def rescale(x: torch.Tensor, q: int) -> torch.Tensor:
    """Isotropic rescaling so that the smaller side is ``q`` (section 3.1), antialiased."""
    h, w = x.shape[-2:]
    if min(h, w) == q:
        return x
    return resize(x, [q], antialias=True)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window; an image smaller than that is rescaled up first."""
    if min(x.shape[-2:]) < size:
        x = rescale(x, size)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` window of a (3, H, W) image (rescaled up first if smaller)."""
    if min(x.shape[-2:]) < size:
        x = rescale(x, size)
    h, w = x.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return x[..., top:top + size, left:left + size]


def scale_jitter_crop(images: torch.Tensor, smin: int, smax: int, crop: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Section 3.1 scale jittering: each image rescaled so that its smaller side is S, drawn
    uniformly from [smin, smax], then a random crop x crop window; one resize per distinct S."""
    n = len(images)
    scales = torch.randint(smin, smax + 1, (n,), generator=generator)
    out = torch.empty(n, images.shape[1], crop, crop, dtype=images.dtype)
    for s in scales.unique().tolist():
        which = (scales == s).nonzero().flatten()
        resized = rescale(images[which], s)
        h, w = resized.shape[-2:]
        tops = torch.randint(0, h - crop + 1, (len(which),), generator=generator)
        lefts = torch.randint(0, w - crop + 1, (len(which),), generator=generator)
        for j, i in enumerate(which.tolist()):
            out[i] = resized[j, :, tops[j]:tops[j] + crop, lefts[j]:lefts[j] + crop]
    return out


def pca_lighting_stats(images: torch.Tensor, max_pixels: int = 2_000_000, seed: int = 0) -> dict[str, list]:
    """Eigen-decomposition of the 3x3 covariance of the training RGB pixel values (0..255),
    AlexNet's colour augmentation that section 3.1 adopts."""
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1)
    if pixels.shape[1] > max_pixels:
        pixels = pixels[:, torch.randperm(pixels.shape[1], generator=torch.Generator().manual_seed(seed))[:max_pixels]]
    eigval, eigvec = torch.linalg.eigh(torch.cov(pixels.to(torch.float64)))
    return {"eigval": eigval.tolist(), "eigvec": eigvec.tolist()}   # eigvec columns are the components


def pca_lighting(x: torch.Tensor, stats: dict[str, list], std: float, generator: torch.Generator) -> torch.Tensor:
    """Add sum_i alpha_i * lambda_i * p_i to every pixel of an image, alpha_i ~ N(0, std)
    drawn per image (AlexNet section 4.1); ``x`` is float on the 0..255 scale."""
    eigval = torch.tensor(stats["eigval"], dtype=x.dtype)
    eigvec = torch.tensor(stats["eigvec"], dtype=x.dtype)
    alpha = torch.randn(len(x), 3, generator=generator, dtype=x.dtype) * std
    shift = (alpha * eigval) @ eigvec.T                                    # (N, 3)
    return x + shift[:, :, None, None]


# ---- the streaming path: data sets that do not fit in memory or differ in image size ----
class StreamingImages(torch.utils.data.Dataset):
    """``root/<class>/*`` read image by image in DataLoader workers: each image rescaled to
    its scale S and cropped to ``crop``, so batches are (B, 3, crop, crop) uint8."""

    def __init__(self, items: list[tuple[Path, int]], classes: list[str], crop: int,
                 scale: tuple[int, int], train: bool, seed: int = 0) -> None:
        self.items, self.classes, self.crop, self.scale, self.train, self.seed = items, classes, crop, scale, train, seed
        self.epoch = 0
        self.flip, self.lighting, self.lighting_std = False, None, 0.0   # set by the trainer
        self.skipped: list[str] = []
        self.labels = torch.tensor([y for _, y in items], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        img = read_image(path)
        if not self.train:  # section 3.2: Q = the middle of the training scale range, centre crop
            return center_crop(rescale(img, (self.scale[0] + self.scale[1]) // 2), self.crop), label
        # a generator per (seed, epoch, image): the same crops whatever the number of workers
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFF_FFFF)
        s = int(torch.randint(self.scale[0], self.scale[1] + 1, (1,), generator=g))
        img = random_crop(rescale(img, s), self.crop, g)
        if self.flip and torch.rand((), generator=g) < 0.5:
            img = img.flip(-1)
        if self.lighting:
            return pca_lighting(img[None].float(), self.lighting, self.lighting_std, g)[0], label
        return img, label

    def subset(self, index: torch.Tensor) -> "StreamingImages":
        view = StreamingImages([self.items[i] for i in index.tolist()], self.classes, self.crop, self.scale,
                               self.train, self.seed)
        view.flip, view.lighting, view.lighting_std = self.flip, self.lighting, self.lighting_std
        view.skipped = self.skipped
        return view

    def loader(self, batches: list[torch.Tensor], workers: int) -> torch.utils.data.DataLoader:
        """One batch per tensor of indices, in order (the epoch's permutation: resumable)."""
        return torch.utils.data.DataLoader(self, batch_sampler=[b.tolist() for b in batches if len(b)],
                                           num_workers=workers, persistent_workers=False)
