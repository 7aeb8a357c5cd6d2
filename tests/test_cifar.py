"""CIFAR-10 loader: a small archive written here in the real python-version format (pickled
dicts of uint8 [N, 3072] channel-major rows), read back from every supported location, and
every failure mode named clearly."""

import os
import pickle
import tarfile

import numpy as np
import pytest

from envs import cifar

PER_BATCH = 30  # 3 images of each class per batch


def fake_image(index: int, label: int) -> np.ndarray:
    """uint8 [32, 32, 3] that identifies itself: red = (y * 8 + x + index) % 256, green = 20 *
    label, blue = 255 - x."""
    y, x = np.mgrid[0:32, 0:32]
    return np.stack([(y * 8 + x + index) % 256, np.full_like(x, 20 * label), 255 - x], -1).astype(np.uint8)


def batch_dict(start: int, count: int = PER_BATCH):
    labels = [(start + i) % 10 for i in range(count)]
    images = [fake_image(start + i, lab) for i, lab in enumerate(labels)]
    data = np.stack([img.transpose(2, 0, 1).reshape(-1) for img in images])  # R plane, G plane, B plane
    return {b"batch_label": b"fake", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * count}


def write_cifar(root, archive: bool = False, names=cifar.CIFAR10_CLASSES, batches=None):
    """Write cifar-10-batches-py/ under root (and pack it as cifar-10-python.tar.gz when
    archive=True, removing the folder). Returns the path a user would pass."""
    folder = os.path.join(root, cifar.FOLDER_NAME)
    os.makedirs(folder, exist_ok=True)
    contents = batches or {f"data_batch_{i}": batch_dict((i - 1) * PER_BATCH) for i in range(1, 6)}
    contents = dict(contents)
    contents.setdefault("test_batch", batch_dict(1000))
    contents.setdefault("batches.meta", {b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    for name, value in contents.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(value if isinstance(value, bytes) else pickle.dumps(value, protocol=2))
    if not archive:
        return folder
    path = os.path.join(root, cifar.ARCHIVE_NAME)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=cifar.FOLDER_NAME)
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    os.rmdir(folder)
    return path


def test_reads_archive_folder_and_parents(tmp_path):
    folder = write_cifar(tmp_path / "a")
    archive = write_cifar(tmp_path / "b", archive=True)
    for path in (folder, tmp_path / "a", archive, tmp_path / "b"):
        images, names = cifar.load_cifar10(path, per_class=4)
        assert images.shape == (10, 4, 32, 32, 3) and images.dtype == np.uint8
        assert names == cifar.CIFAR10_CLASSES
        # class 3's images in file order: indices 3, 13, 23 of batch 1, then 33 of batch 2
        for j, index in enumerate((3, 13, 23, 33)):
            np.testing.assert_array_equal(images[3, j], fake_image(index, 3))


def test_per_class_stops_reading_early_and_none_takes_all(tmp_path):
    path = write_cifar(
        tmp_path,
        batches={
            "data_batch_1": batch_dict(0),
            "data_batch_2": batch_dict(30),
            "data_batch_3": b"not a pickle",
            "data_batch_4": b"",
            "data_batch_5": b"",
        },
    )
    images, _ = cifar.load_cifar10(path, per_class=6)  # batches 1-2 hold 6 per class
    assert images.shape[1] == 6
    with pytest.raises(ValueError, match="data_batch_3: not a readable CIFAR-10 python pickle"):
        cifar.load_cifar10(path, per_class=7)
    full = write_cifar(tmp_path / "full")
    assert cifar.load_cifar10(full)[0].shape[1] == 15  # 5 batches x 3 per class
    assert cifar.load_cifar10(full, split="test")[0].shape[1] == 3


def test_class_names_come_from_the_metadata(tmp_path):
    names = tuple(f"class{i}" for i in range(10))
    assert cifar.load_cifar10(write_cifar(tmp_path / "a", names=names), per_class=1)[1] == names
    folder = write_cifar(tmp_path / "b")
    os.remove(os.path.join(folder, "batches.meta"))
    assert cifar.load_cifar10(folder, per_class=1)[1] == cifar.CIFAR10_CLASSES


def test_missing_data_names_the_path_and_the_expected_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(
        FileNotFoundError, match=f"{missing}.*does not exist.*cifar-10-python.tar.gz.*cifar-10-batches-py"
    ):
        cifar.load_cifar10(missing)
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 data in directory .*cifar-10-python.tar.gz"):
        cifar.load_cifar10(tmp_path)
    folder = write_cifar(tmp_path / "x")
    os.remove(os.path.join(folder, "data_batch_2"))
    with pytest.raises(FileNotFoundError, match="data_batch_2' is missing"):
        cifar.load_cifar10(folder)
    empty_tar = tmp_path / "empty.tar.gz"
    with tarfile.open(empty_tar, "w:gz"):
        pass
    with pytest.raises(FileNotFoundError, match="has no member 'cifar-10-batches-py/data_batch_1'"):
        cifar.load_cifar10(empty_tar)
    not_tar = tmp_path / "cifar.txt"
    not_tar.write_text("hello")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        cifar.load_cifar10(not_tar)


@pytest.mark.parametrize(
    "batch,message",
    [
        (pickle.dumps([1, 2, 3]), "expected a pickled dict, got list"),
        ({b"labels": [0]}, "needs 'data' and 'labels'"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"uint8 \[N, 3072\]"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"uint8 \[N, 3072\]"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"2 integers in \[0, 10\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "'labels' must be 2 integers"),
    ],
)
def test_malformed_batches(tmp_path, batch, message):
    path = write_cifar(tmp_path, batches={"data_batch_1": batch})
    with pytest.raises(ValueError, match=f"data_batch_1: .*{message}"):
        cifar.load_cifar10(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_pickles_cannot_run_code(tmp_path):
    path = write_cifar(tmp_path, batches={"data_batch_1": pickle.dumps({b"data": _Exploit(), b"labels": [0]})})
    with pytest.raises(ValueError, match="refusing to load .*system"):
        cifar.load_cifar10(path)


def test_argument_errors(tmp_path):
    path = write_cifar(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        cifar.load_cifar10(path, split="valid")
    with pytest.raises(ValueError, match="per_class must be a positive integer"):
        cifar.load_cifar10(path, per_class=0)
    with pytest.raises(ValueError, match=r"only \[15, 15, .*16 per class were requested"):
        cifar.load_cifar10(path, per_class=16)
