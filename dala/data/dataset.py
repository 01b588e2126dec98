"""A torch ``Dataset`` over the index, and the transform presets.

Histology has no up or down, so training augmentation is the dihedral group (flips and
90-degree rotations) plus mild colour jitter standing in for stain variation; evaluation only
resizes and normalises. Images are squashed to a square (not centre-cropped) so that nothing at
the edge of the field -- where a lesion may sit -- is cut away, and a heatmap maps straight back
onto the original 700x460 frame.

Decoding a 700x460 PNG costs ~8 ms; ``cache=True`` decodes each image once, resized to
``cache_size``, and keeps the uint8 array in memory for later epochs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from dala.data.augment import StainJitter
from dala.data.images import load_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomRot90(torch.nn.Module):
    """Rotate by 0, 90, 180 or 270 degrees at random (with flips: the 8 dihedral views)."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # (..., H, W)
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(img, k, dims=(-2, -1)) if k else img


def build_transform(kind: str = "eval", *, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    jitter: float = 0.05) -> v2.Compose:
    """Transform presets, one image at a time.

    - "train": dihedral view + mild stain jitter (``dala.data.augment.StainJitter``), normalised;
    - "eval": resized and normalised;
    - "dihedral": the geometric half of "train" alone, as uint8 ``(3, size, size)``: for loops that
      add the colour half to whole batches (``dala.data.augment.TrainBatchTransform``), as the
      engine does. Both halves together are exactly "train".
    """
    if kind not in ("train", "eval", "dihedral"):
        raise ValueError(f"transform kind must be 'train', 'eval' or 'dihedral', not {kind!r}")
    ops: list = [v2.ToImage(), v2.Resize((size, size), antialias=True)]
    if kind in ("train", "dihedral"):
        ops += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    if kind == "dihedral":
        return v2.Compose(ops)
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if kind == "train" and jitter > 0:
        ops.append(StainJitter.from_strength(jitter))
    ops.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(ops)


class BreakHisDataset(Dataset):
    """Rows of the index as ``(image (3, H, W) float tensor, target int)``.

    ``cache=True`` keeps each decoded image (resized to ``cache_size`` x ``cache_size``) in
    memory; set ``cache_size`` at or above the transform's size.
    """

    def __init__(self, frame: pd.DataFrame, *, transform=None, cache: bool = False, cache_size: int | None = None,
                 target_column: str = "target", stain=None):
        self.stain = stain  # PIL -> PIL at decode, before resizing (dala.data.stain.StainStep): once per image
        self.paths = frame["path"].tolist()
        self.targets = frame[target_column].astype(int).tolist()
        self.image_ids = frame["image_id"].tolist() if "image_id" in frame else [str(i) for i in range(len(frame))]
        self.transform = transform
        self.cache = cache
        self.cache_size = cache_size
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def preload(self, *, threads: int = 4, on_progress=None) -> "BreakHisDataset":
        """Decode every image now (``cache_size`` required) into one contiguous uint8 array.

        One array rather than a dict of arrays: DataLoader workers forked afterwards share its
        pages copy-on-write instead of each decoding and caching its own copy. PNG decoding
        releases the GIL, so a thread pool decodes in parallel.
        """
        from concurrent.futures import ThreadPoolExecutor

        if not self.cache_size:
            raise ValueError("preload needs cache_size (the side the images are stored at)")
        arr = np.empty((len(self), self.cache_size, self.cache_size, 3), dtype=np.uint8)

        def work(i: int) -> None:
            arr[i] = np.asarray(self._decode(i).resize((self.cache_size, self.cache_size), Image.BILINEAR))

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for done, _ in enumerate(pool.map(work, range(len(self))), 1):
                if on_progress:
                    on_progress(done, len(self))
        self._array = arr
        return self

    def _decode(self, i: int) -> Image.Image:
        im = load_rgb(self.paths[i])
        return self.stain(im) if self.stain is not None else im

    def load_image(self, i: int) -> Image.Image:
        if getattr(self, "_array", None) is not None:
            return Image.fromarray(self._array[i])
        if self.cache and i in self._cache:
            return Image.fromarray(self._cache[i])
        im = self._decode(i)
        if self.cache_size:
            im = im.resize((self.cache_size, self.cache_size), Image.BILINEAR)
        if self.cache:
            self._cache[i] = np.asarray(im)
        return im

    def __getitem__(self, i: int):
        im = self.load_image(i)
        x = self.transform(im) if self.transform is not None else v2.functional.to_image(im)
        return x, self.targets[i]
