"""CIFAR-10 from the standard python-version archive, for the photo-tile Shisen-Sho.

The user supplies the data: `cifar-10-python.tar.gz` (https://www.cs.toronto.edu/~kriz/cifar.html)
or its extracted `cifar-10-batches-py/` directory. Nothing is ever downloaded.

    images, names = load_cifar10("/data/cifar-10-python.tar.gz", per_class=32)
    images.shape == (10, 32, 32, 32, 3)   # [class, image, H, W, RGB] uint8

The batches are Python pickles; they are read with an unpickler that only rebuilds plain
containers and numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
IMAGE_BYTES = 32 * 32 * 3

_EXPECTED = (
    f"expected the CIFAR-10 python-version archive '{ARCHIVE_NAME}' or its extracted '{FOLDER_NAME}/' "
    f"directory (with data_batch_1..5, test_batch, batches.meta), or a directory containing one of them; "
    f"g1jax never downloads it (https://www.cs.toronto.edu/~kriz/cifar.html)"
)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes, numbers and numpy arrays; refuses anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes into protocol-2 pickles
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means the file is not a CIFAR batch
        raise ValueError(f"{where}: not a readable CIFAR-10 python pickle ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(batch).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _locate(path: str) -> tuple[str, str]:
    """("archive", file) or ("folder", directory holding the batches)."""
    if os.path.isfile(path):
        return "archive", path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"CIFAR-10 path {path!r} does not exist: {_EXPECTED}")
    for folder in (path, os.path.join(path, FOLDER_NAME)):
        if any(os.path.isfile(os.path.join(folder, name)) for name in ("data_batch_1", "test_batch")):
            return "folder", folder
    if os.path.isfile(os.path.join(path, ARCHIVE_NAME)):
        return "archive", os.path.join(path, ARCHIVE_NAME)
    raise FileNotFoundError(f"no CIFAR-10 data in directory {path!r}: {_EXPECTED}")


class _Source:
    """Reads named batch files from the archive or the extracted directory."""

    def __init__(self, path: str):
        self.kind, self.path = _locate(path)
        if self.kind == "archive":
            try:
                self.tar = tarfile.open(self.path, "r:*")
            except (tarfile.TarError, OSError) as err:
                raise ValueError(f"{self.path!r} is not a readable tar archive ({err}); {_EXPECTED}") from None

    def read(self, name: str) -> tuple[bytes, str]:
        """(contents, a description of where they came from for error messages)."""
        if self.kind == "folder":
            file = os.path.join(self.path, name)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file!r} is missing: {_EXPECTED}")
            with open(file, "rb") as f:
                return f.read(), file
        member = f"{FOLDER_NAME}/{name}"
        try:
            handle = self.tar.extractfile(member)
        except KeyError:
            handle = None
        if handle is None:
            raise FileNotFoundError(f"{self.path!r} has no member {member!r}: {_EXPECTED}")
        return handle.read(), f"{self.path}:{member}"


def _class_names(source: _Source) -> tuple[str, ...]:
    try:
        raw, where = source.read("batches.meta")
    except FileNotFoundError:
        return CIFAR10_CLASSES  # the metadata file is optional: the class order is fixed
    names = _unpickle(raw, where).get("label_names")
    if not isinstance(names, list) or len(names) != len(CIFAR10_CLASSES):
        raise ValueError(f"{where}: 'label_names' must list {len(CIFAR10_CLASSES)} class names, got {names!r}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _read_batch(source: _Source, name: str):
    raw, where = source.read(name)
    batch = _unpickle(raw, where)
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{where}: a CIFAR-10 batch needs 'data' and 'labels', found keys {sorted(batch)}")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{where}: 'data' must be uint8 [N, {IMAGE_BYTES}], got {type(data).__name__} {shape}")
    if (
        labels.shape != (data.shape[0],)
        or labels.dtype.kind not in "iu"
        or labels.min() < 0
        or labels.max() >= len(CIFAR10_CLASSES)
    ):
        raise ValueError(f"{where}: 'labels' must be {data.shape[0]} integers in [0, {len(CIFAR10_CLASSES)})")
    # rows are channel-major: 1024 red, 1024 green, 1024 blue values, each 32 x 32 row-major
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(path: str, split: str = "train", per_class: int | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Images grouped by class: (uint8 [10, n, 32, 32, 3], class names). n = per_class (the
    first n images of each class, in file order; batches past the point where every class has
    n are not read), or, when None, the largest count every class reaches."""
    if split not in SPLITS:
        raise ValueError(f"CIFAR-10 split must be one of {sorted(SPLITS)}, got {split!r}")
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise ValueError(f"per_class must be a positive integer or None, got {per_class!r}")
    source = _Source(os.fspath(path))
    names = _class_names(source)
    by_class = [[] for _ in names]
    for batch_name in SPLITS[split]:
        images, labels = _read_batch(source, batch_name)
        for c in range(len(names)):
            by_class[c].extend(images[labels == c])
        if per_class is not None and min(map(len, by_class)) >= per_class:
            break
    counts = [len(images) for images in by_class]
    n = min(counts) if per_class is None else per_class
    if min(counts) < n or n == 0:
        raise ValueError(f"{path!r} ({split}) has only {counts} images per class; {n} per class were requested")
    return np.stack([np.stack(images[:n]) for images in by_class]), names
