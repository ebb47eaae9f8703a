"""The data root is one category laid out like an MVTec category folder:
<root>/train/good/*.png, <root>/test/<label>/*.png, <root>/ground_truth/<label>/<stem>_mask.png."""
from __future__ import annotations

from adbench.data import Sample
from adbench.dataset import CategoryIndex, CategoryInfo, DatasetAdapter, list_images


class FlatFolder(DatasetAdapter):
    def categories(self):
        return [self.root.name] if (self.root / "train" / "good").is_dir() else []

    def index(self, category):
        train = [Sample(p, 0, category, "train") for p in list_images(self.root / "train" / "good")]
        test = []
        for folder in sorted(p for p in (self.root / "test").iterdir() if p.is_dir()):
            for p in list_images(folder):
                if folder.name == "good":
                    test.append(Sample(p, 0, category, "test"))
                else:
                    mask = self.root / "ground_truth" / folder.name / f"{p.stem}_mask.png"
                    test.append(Sample(p, 1, category, "test", folder.name, mask))
        return CategoryIndex(CategoryInfo(category), train, test)
