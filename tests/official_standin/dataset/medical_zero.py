"""The official zero-shot test set's contract: test/good then test/Ungood, each sorted."""
from dataset.medical_few import CLASS_INDEX, MedDataset


class MedTestDataset(MedDataset):
    def __init__(self, dataset_path, class_name="Brain", resize=240):
        self.seg = CLASS_INDEX[class_name] > 0
        MedDataset._test_images(self, dataset_path, class_name, resize)
