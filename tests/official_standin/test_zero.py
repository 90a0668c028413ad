"""Zero-shot test with the official command line: adapters loaded from --save_path/<obj>.pth,
no memory bank; the image score from the det bank, the map from the seg bank, each min-max
normalised over the test set; the image AUROC computed first."""
import argparse
import os

import numpy as np
import torch
from CLIP.adapter import CLIP_Inplanted
from CLIP.clip import create_model
from dataset.medical_zero import MedTestDataset
from prompt import REAL_NAME
from sklearn.metrics import roc_auc_score
from train_few import patch_logits, to_image
from utils import encode_text_with_prompt_ensemble


def main():
    parser = argparse.ArgumentParser()
    for name, kind, default in (("--model_name", str, "ViT-L-14-336"), ("--pretrain", str, "openai"),
                                ("--obj", str, "Brain"), ("--data_path", str, "./data/"),
                                ("--img_size", int, 240), ("--save_path", str, "./ckpt/zero-shot/"),
                                ("--seed", int, 111)):
        parser.add_argument(name, type=kind, default=default)
    parser.add_argument("--features_list", type=int, nargs="+", default=[6, 12, 18, 24])
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    clip = create_model(args.model_name, args.img_size, pretrained=args.pretrain).eval()
    model = CLIP_Inplanted(clip, args.features_list).eval()
    adapters = torch.load(os.path.join(args.save_path, f"{args.obj}.pth"), weights_only=True)
    model.seg_adapters.load_state_dict(adapters["seg_adapters"])
    model.det_adapters.load_state_dict(adapters["det_adapters"])
    data = MedTestDataset(args.data_path, args.obj, args.img_size)
    with torch.no_grad():
        text = encode_text_with_prompt_ensemble(clip, REAL_NAME[args.obj], "cpu")
    images, maps, labels, masks = [], [], [], []
    for image, label, mask in torch.utils.data.DataLoader(data, batch_size=1):
        with torch.no_grad():
            _, seg_tokens, det_tokens = model(image)
        images.append(sum(patch_logits(t, text).softmax(dim=-1)[:, 1].mean()
                          for t in det_tokens).item())
        maps.append(sum(to_image(patch_logits(t, text), args.img_size).softmax(dim=1)[:, 1]
                        for t in seg_tokens)[0].numpy())
        labels.append(int(label))
        masks.append((mask[0, 0] > 0.5).numpy().astype(int))
    images, maps = np.array(images), np.array(maps)
    images = (images - images.min()) / (images.max() - images.min())
    maps = (maps - maps.min()) / (maps.max() - maps.min())
    print(f"{args.obj} AUC : {round(roc_auc_score(labels, images), 4)}")
    if data.seg:
        print(f"{args.obj} pAUC : {round(roc_auc_score(np.array(masks).ravel(), maps.ravel()), 4)}")


if __name__ == "__main__":
    main()
