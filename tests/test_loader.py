"""Both data paths behind one interface: batches of inputs and labels, augmentation owned by the loader."""

import torch

from conftest import write_image_folder
from vggnet.configs import get_recipe
from vggnet.data import StreamingImages, list_image_folder, load_folder_tensors
from vggnet.distributed import World
from vggnet.loader import Augmentation, StreamLoader, TensorLoader, make_loader
from vggnet.preprocess import Preprocessing


def loaders(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=2, per_class=10, size=32)
    prep = Preprocessing((120.0, 110.0, 100.0), (60.0, 60.0, 60.0), crop=32, resize=32)
    aug = Augmentation.of(get_recipe("fast").replace(cutout=8), 32, (32, 40), None)
    memory = make_loader(load_folder_tensors(root / "train"), prep, aug, torch.Generator().manual_seed(0), World())
    items, classes = list_image_folder(root / "train")
    streamed = make_loader(StreamingImages(items, classes), prep, aug, torch.Generator().manual_seed(0), World(),
                           workers=0)
    return memory, streamed


def test_both_paths_give_the_same_test_inputs_for_images_of_one_size(tmp_path):
    memory, streamed = loaders(tmp_path)
    assert isinstance(memory, TensorLoader) and isinstance(streamed, StreamLoader)
    assert len(memory) == len(streamed) == 20 and torch.equal(memory.labels, streamed.labels)
    order = torch.tensor([5, 0, 19, 12, 7])
    (xm, ym), = memory.eval_batches(order, 8)
    (xs, ys), = streamed.eval_batches(order, 8)
    assert xm.shape == (5, 3, 32, 32) and xm.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ym, ys) and torch.equal(xm, xs)


def test_training_batches_are_augmented_inputs_with_the_global_batch_size(tmp_path):
    for loader in loaders(tmp_path):
        batches = list(loader.train_batches(torch.arange(20), 8, epoch=0))
        assert [(x.shape, len(y), n) for x, y, n in batches] == [((8, 3, 32, 32), 8, 8), ((8, 3, 32, 32), 8, 8),
                                                                 ((4, 3, 32, 32), 4, 4)]
        x = batches[0][0]
        holes = (x == 0).all(1)                                   # Cutout: one zeroed square per image
        assert x.is_contiguous(memory_format=torch.channels_last) and bool(holes.flatten(1).any(1).all())
        test_x, _ = next(loader.eval_batches(torch.arange(8), 8))
        assert not torch.equal(x, test_x)                         # scale jitter, crops and flips moved pixels
