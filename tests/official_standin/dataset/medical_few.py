"""The official dataset class's contract: test images, few-shot images from the seed file."""
import os

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

CLASS_INDEX = {"Brain": 3, "Chest": -2}


class MedDataset(Dataset):
    def __init__(self, dataset_path, class_name, resize=240, shot=4, iterate=0):
        self.seg = CLASS_INDEX[class_name] > 0
        self.shot, self.iterate = shot, iterate
        self._test_images(dataset_path, class_name, resize)
        self.fewshot_norm_img = self._shots("n", "good")
        self.fewshot_abnorm_img = self._shots("a", "Ungood")
        self.fewshot_abnorm_mask = self._shots("a", "Ungood", masks=True) if self.seg else None

    def _test_images(self, dataset_path, class_name, resize):
        self.root = os.path.join(dataset_path, f"{class_name}_AD")
        self.resize, self.class_name = resize, class_name
        self.image = transforms.Compose([transforms.Resize((resize, resize), Image.BICUBIC),
                                         transforms.ToTensor()])
        self.mask = transforms.Compose([transforms.Resize((resize, resize), Image.NEAREST),
                                        transforms.ToTensor()])
        self.x, self.y = [], []
        for label, kind in ((0, "good"), (1, "Ungood")):
            folder = os.path.join(self.root, "test", kind, "img")
            names = sorted(os.listdir(folder))
            self.x += [os.path.join(folder, name) for name in names]
            self.y += [label] * len(names)

    def _shots(self, kind, folder, masks=False):
        seed_file = f"./dataset/fewshot_seed/{self.class_name}/{self.shot}-shot.txt"
        with open(seed_file) as handle:
            names = next(line.split()[1:] for line in handle
                         if line.startswith(f"{kind}-{self.iterate}:"))
        sub = "anomaly_mask" if masks else "img"
        return torch.stack([self._load(os.path.join(self.root, "valid", folder, sub, name), masks)
                            for name in names[:self.shot]])

    def _load(self, path, mask=False):
        if mask:
            return self.mask(Image.open(path).convert("L"))
        return self.image(Image.open(path).convert("RGB"))

    def __getitem__(self, index):
        path, label = self.x[index], self.y[index]
        if self.seg and label:
            mask = self._load(path.replace("img", "anomaly_mask"), mask=True)
        else:
            mask = torch.zeros(1, self.resize, self.resize)
        return self._load(path), label, mask

    def __len__(self):
        return len(self.x)
