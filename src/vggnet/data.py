"""Data: image folders and the CIFAR-10 archive, decoded once into uint8 tensors.

Small data sets (CIFAR scale) live in memory as one (N, 3, H, W) uint8 tensor,
cached on disk as safetensors keyed by the folder listing (airbench style); larger ones,
or photographs of different sizes, are listed and read image by image
(:class:`StreamingImages`). Batches of either are made by :mod:`vggnet.loader`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm import tqdm
from torchvision.io import ImageReadMode, decode_image

from .augment import pca_lighting, random_crop
from .errors import VggnetError, os_error
from .files import file_digest, replacing, write_safetensors_atomic
from .preprocess import Preprocessing, rescale

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_LOCATIONS = ("data/cifar10", "data/cifar10-jpeg", "../shared/data/cifar10-jpeg")


class DataError(VggnetError):
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

    @property
    def image_size(self) -> int | None:
        """The side every image has (the training crop by default); None for varied sizes."""
        return int(self.images.shape[-1])

    def subset(self, index: torch.Tensor) -> "TensorData":
        return TensorData(self.images[index], self.labels[index], self.classes, self.skipped)

    def statistics_sample(self, n: int, seed: int, crop: int, scale: tuple[int, int]) -> torch.Tensor:
        """Every image: the mean RGB (2.1) and PCA statistics (3.1) of all the training pixels."""
        return self.images


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


def max_pixels() -> int:
    """The largest image decoded: $VGGNET_MAX_PIXELS, else 100 megapixels (a 48 KB PNG can
    decode to 20000x20000, 1.2 GB; PIL's own guard is bypassed by torchvision's decoders)."""
    return int(os.environ.get("VGGNET_MAX_PIXELS", 100_000_000))


def check_size(path: Path, raw: bytes) -> None:
    """Refuse an image whose header declares more than :func:`max_pixels`, before decoding it
    (the header is parsed from the bytes already read: no second read of the file)."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(raw)) as img:
            w, h = img.size
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: {exc}") from None
    except Exception:   # not readable by PIL: the decoders below say why
        return
    if w * h > max_pixels():
        raise DataError(f"{path}: {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of {max_pixels() / 1e6:.0f} "
                        "(set VGGNET_MAX_PIXELS to allow more)")


def read_image(path: Path) -> torch.Tensor:
    """Any image file as (3, H, W) uint8 RGB: grayscale, alpha, palette, 16-bit and CMYK
    files are converted; a DataError names a file that cannot be read, decoded, or is too large."""
    try:
        raw = path.read_bytes()
    except OSError as exc:   # a dangling or looping symlink, no permission
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    check_size(path, raw)
    try:
        image = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception as exc:  # torchvision raises RuntimeError for corrupt files
        return _read_with_pil(path, raw, exc)
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def _read_with_pil(path: Path, raw: bytes, first_error: Exception) -> torch.Tensor:
    """Fallback for formats torchvision does not decode (CMYK JPEG on some builds, GIF, TIFF),
    from the bytes already read."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(raw)) as img:
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
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:          # a dangling or looping symlink: decoding will name it
            size = mtime = -1
        h.update(f"{path.absolute()}|{size}|{mtime}|{label}\n".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where decoded data sets and fine-tuning features are kept: $VGGNET_CACHE, else ~/.cache/vggnet."""
    return Path(os.environ.get("VGGNET_CACHE", Path.home() / ".cache" / "vggnet"))


def read_cached(path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    """A cache file's tensors, or None when there is none; a corrupt one (torn, truncated,
    another program's) is named on stderr, removed, and so rebuilt by the caller."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        missing = [k for k in keys if k not in tensors]
        why = f"no {', '.join(missing)} tensor" if missing else ""
    except (SafetensorError, OSError, ValueError) as exc:
        tensors, why = {}, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if not why:
        return tensors
    print(f"vggnet: cache file {path} is unreadable ({why}): removed, building it again", file=sys.stderr)
    path.unlink(missing_ok=True)
    return None


def write_cached(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Keep ``tensors`` in the cache (atomic: ranks may build the same file at once); a cache
    folder that cannot be written is named, with the setting that moves it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors_atomic(path, tensors)
    except OSError as exc:
        raise os_error(exc, "write the cache file", path, "set VGGNET_CACHE to a writable folder with free space, "
                       "or free some (vggnet cache --clear)") from None


def cache_entries() -> list[tuple[Path, int]]:
    """(file, bytes) of every cached data set and feature file, largest first."""
    root = cache_dir()
    files = [p for p in root.glob("*.safetensors") if p.is_file()] if root.is_dir() else []
    return sorted(((p, p.stat().st_size) for p in files), key=lambda e: -e[1])


def clear_cache() -> tuple[int, int]:
    """Delete the cached files (they are rebuilt when next needed); (files, bytes) freed."""
    entries = cache_entries()
    for path, _ in entries:
        path.unlink(missing_ok=True)
    return len(entries), sum(size for _, size in entries)


def reject_bad(bad: list[tuple[Path, str]], skip_bad: bool) -> list[str]:
    """Stop with every unreadable file named, or (``skip_bad``) return them to be listed."""
    if bad and not skip_bad:
        listing = "; ".join(f"{p}: {why}" for p, why in bad[:20])
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        raise DataError(f"{len(bad)} unreadable image(s): {listing}{more}; fix or remove them, or pass --skip-bad")
    return [str(p) for p, _ in bad]


def scan_images(items: list[tuple[Path, int]]) -> list[tuple[Path, str]]:
    """Decode every file to stream once before training (PIL's verify() does not decode JPEG
    data, so truncated photos and dangling symlinks would stop a run mid-epoch)."""
    bad = []
    for path, _ in tqdm(items, desc="checking images", unit="img", disable=None if len(items) > 2000 else True):
        try:
            read_image(path)
        except DataError as exc:
            bad.append((path, str(exc).split(": ", 1)[-1]))
    return bad


def load_folder_tensors(root: Path, use_cache: bool = True, skip_bad: bool = False) -> TensorData:
    """Decode every image of ``root/<class>/`` once into a uint8 tensor (all the same size),
    cached as safetensors keyed by the listing; unreadable files stop the load, naming
    every one, or are left out with ``skip_bad``."""
    items, classes = list_image_folder(root)
    key = _listing_key(items)
    cached = cache_dir() / f"{root.resolve().name}-{key}.safetensors"
    tensors = read_cached(cached, ("images", "labels")) if use_cache else None
    if tensors is not None:
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
        skipped_json = torch.frombuffer(bytearray(json.dumps(skipped).encode()), dtype=torch.uint8)
        write_cached(cached, {"images": data.images, "labels": data.labels, "skipped_json": skipped_json})
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
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                base = Path(member.name).name
                split = "train" if base.startswith("data_batch") else "test" if base == "test_batch" else None
                fh = tar.extractfile(member) if split else None
                if fh is not None:
                    splits[split].append(_NumpyOnlyUnpickler(fh, encoding="bytes").load())
    except (tarfile.TarError, EOFError, zlib.error, pickle.UnpicklingError) as exc:
        raise DataError(f"{archive}: not a readable CIFAR-10 .tar.gz ({str(exc) or type(exc).__name__}); "
                        "download it again (--download DIR checks its MD5)") from None
    if not splits["train"] or not splits["test"]:
        raise DataError(f"{archive}: not a CIFAR-10 python archive (no data_batch_* / test_batch)")

    def stack(batches: list[dict]) -> TensorData:
        images = torch.cat([torch.from_numpy(b[b"data"]).reshape(-1, 3, 32, 32) for b in batches])
        labels = torch.cat([torch.tensor(b[b"labels"], dtype=torch.int64) for b in batches])
        return TensorData(images.contiguous(), labels, list(CIFAR10_CLASSES))

    return stack(splits["train"]), stack(splits["test"])


def md5sum(path: Path) -> str:
    """The MD5 the CIFAR-10 archive is published with."""
    return file_digest(path, "md5")


def download(url: str, dest: Path, md5: str) -> Path:
    """Fetch ``url`` to ``dest`` (via a temporary name) and check its MD5; a bad file is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    try:
        with replacing(dest, suffix=".part") as tmp:     # a failed or bad download leaves nothing
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            got = md5sum(tmp)
            if got != md5:
                raise DataError(f"{url}: MD5 mismatch (got {got}, expected {md5}); the download was removed")
    except OSError as exc:      # no network (URLError), a timeout, a full disk
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DataError(f"cannot download {url} into {dest.parent}: {reason}; without a network, copy "
                        f"{dest.name} into {dest.parent} (or give --data a CIFAR-10 folder)") from None
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


DEFAULT_VAL_FRACTION = 0.1   # 5,000 of CIFAR-10's 50,000, as the paper held out part of its training set


def holdout_size(val_size: float | None, n: int) -> int:
    """Images held out for validation: a count (``val_size`` >= 1), a fraction of the ``n``
    training images (0 < ``val_size`` < 1), none (0), or 10 % by default (None)."""
    if val_size is None:
        val_size = DEFAULT_VAL_FRACTION
    if val_size < 0 or (val_size >= 1 and val_size != int(val_size)):
        raise DataError(f"validation size (--val-size) must be a count, a fraction in (0, 1) or 0; got {val_size:g}")
    return int(val_size) if val_size >= 1 or val_size == 0 else int(round(val_size * n))


def split_validation(data: TensorData, size: int, seed: int) -> tuple[TensorData, TensorData]:
    """(train, validation): ``size`` images held out by a seeded permutation."""
    if not 0 <= size < len(data):
        raise DataError(f"validation size {size} must be below the {len(data)} training images "
                        "(--val-size takes a count, a fraction such as 0.1, or 0 for none)")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[size:].sort().values), data.subset(perm[:size].sort().values)


# ---- the streaming path: data sets that do not fit in memory or differ in image size ----
class StreamingImages(torch.utils.data.Dataset):
    """``root/<class>/*`` read image by image in DataLoader workers: each image rescaled to
    its scale S and cropped to ``crop``, so batches are (B, 3, crop, crop) uint8."""

    def __init__(self, items: list[tuple[Path, int]], classes: list[str], crop: int = 224,
                 scale: tuple[int, int] = (256, 256), train: bool = False, seed: int = 0, epoch: int = 0,
                 flip: bool = False, lighting: dict | None = None, lighting_std: float = 0.0) -> None:
        self.items, self.classes, self.crop, self.scale, self.train, self.seed = items, classes, crop, scale, train, seed
        self.epoch, self.flip, self.lighting, self.lighting_std = epoch, flip, lighting, lighting_std
        self.skipped: list[str] = []
        self.labels = torch.tensor([y for _, y in items], dtype=torch.int64)

    def view(self, **transform: object) -> "StreamingImages":
        """The same images with other transform settings (crop, scale, train, epoch, flip, lighting ...)."""
        settings = {k: getattr(self, k) for k in ("crop", "scale", "train", "seed", "epoch", "flip", "lighting",
                                                  "lighting_std")}
        view = StreamingImages(self.items, self.classes, **{**settings, **transform})
        view.skipped, view.labels = self.skipped, self.labels
        return view

    def statistics_sample(self, n: int, seed: int, crop: int, scale: tuple[int, int]) -> torch.Tensor:
        """``n`` seeded centre crops at the middle training scale, for the mean RGB (2.1) and
        PCA statistics (3.1): decoding every photograph would take an epoch."""
        view = self.subset(random_subset(len(self), min(n, len(self)), seed)).view(train=False, crop=crop, scale=scale)
        return torch.stack([view[i][0] for i in range(len(view))])

    def __len__(self) -> int:
        return len(self.items)

    @property
    def image_size(self) -> int | None:
        """None: photographs of varied sizes (rescaled to S and cropped, 3.1)."""
        return None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        img = read_image(path)
        if not self.train:  # section 3.2: Q = the middle of the training scale range, centre crop
            return Preprocessing(crop=self.crop, resize=(self.scale[0] + self.scale[1]) // 2).crop_images(img), label
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
                               self.train, self.seed, self.epoch, self.flip, self.lighting, self.lighting_std)
        view.skipped = self.skipped
        return view

    def loader(self, batches: list[torch.Tensor], workers: int, pin: bool = False) -> torch.utils.data.DataLoader:
        """One batch per tensor of indices, in order (the epoch's permutation: resumable);
        ``pin``: page-locked batches for asynchronous copies to a GPU."""
        # its own generator: the workers' base seed is not drawn from the global RNG that dropout
        # uses, so a run resumed mid-epoch (a new loader) draws the same dropout masks
        return torch.utils.data.DataLoader(self, batch_sampler=[b.tolist() for b in batches if len(b)],
                                           num_workers=workers, persistent_workers=False, pin_memory=pin,
                                           generator=torch.Generator())


def random_subset(n: int, k: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``k`` out of ``n`` (for quick runs on part of a data set)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
