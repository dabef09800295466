"""Stanford Online Products (Oh Song et al. 2016) from ``Ebay_train.txt`` / ``Ebay_test.txt``."""

from __future__ import annotations

import os

from lightning_dml.data.benchmark import Annotations, BenchmarkDataModule, check_range, parse_int, read_rows

CLASS_RANGES = {"train": (1, 11318), "test": (11319, 22634)}
NUM_SUPER_CLASSES = 12


class StanfordOnlineProducts(BenchmarkDataModule):
    """SOP: 120,053 product images; train 59,551 images of 11,318 products, test 60,502 of 11,316.

    Rows are ``image_id class_id super_class_id path`` after a header. Super-classes (12 product types)
    are kept per image in ``source.metadata["super_class"]``. Some images are exact duplicates: every row
    stays an item of its own, and leave-one-out evaluation excludes a query by its index only.

    Args:
        root: the ``Stanford_Online_Products`` folder or its parent.
        **kwargs: the :class:`BenchmarkDataModule` arguments.
    """

    dataset_name = "Stanford Online Products"
    layout = "Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <category>_final/<image>.JPG}"
    where_to_get = (
        "download Stanford_Online_Products.zip, linked from cvgl.stanford.edu/projects/lifted_struct"
    )
    published = (("train", 59551, 11318), ("test", 60502, 11316))
    split_note = (
        "zero-shot, products 1–11,318 train, 11,319–22,634 test (leave-one-out, self excluded by index)"
    )

    def read(self) -> Annotations:
        """Read both list files, checking each file's class id range and the super-class ids."""
        folder = self.find_root("Ebay_train.txt", "Stanford_Online_Products")
        annotations = Annotations(metadata={"super_class": []})
        for part, (low, high) in CLASS_RANGES.items():
            path = folder / f"Ebay_{part}.txt"
            for line, (_, class_id, super_class_id, image) in read_rows(path, 4, skip=1, layout=self.layout):
                where = f"{path} line {line}"
                label = parse_int(path, line, "class id", class_id)
                check_range(where, "class id", label, low, high)
                super_class = parse_int(path, line, "super-class id", super_class_id)
                check_range(where, "super-class id", super_class, 1, NUM_SUPER_CLASSES)
                annotations.paths.append(os.path.join(folder, image))
                annotations.labels.append(label)
                annotations.parts.append(part)
                annotations.origins.append(where)
                annotations.metadata["super_class"].append(super_class)
        return annotations
