"""Few-shot training with the official command line: batch 1, the test set scored after every
epoch (the official model selection)."""
import argparse
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from CLIP.adapter import CLIP_Inplanted
from CLIP.clip import create_model
from dataset.medical_few import CLASS_INDEX, MedDataset
from loss import BinaryDiceLoss, FocalLoss
from prompt import REAL_NAME
from sklearn.metrics import roc_auc_score
from utils import augment, cos_sim, encode_text_with_prompt_ensemble


def arguments():
    parser = argparse.ArgumentParser()
    for name, kind, default in (("--model_name", str, "ViT-L-14-336"), ("--pretrain", str, "openai"),
                                ("--obj", str, "Brain"), ("--data_path", str, "./data/"),
                                ("--batch_size", int, 1), ("--save_model", int, 1),
                                ("--save_path", str, "./ckpt/few-shot/"), ("--img_size", int, 240),
                                ("--epoch", int, 50), ("--learning_rate", float, 0.001),
                                ("--seed", int, 111), ("--shot", int, 4), ("--iterate", int, 0)):
        parser.add_argument(name, type=kind, default=default)
    parser.add_argument("--features_list", type=int, nargs="+", default=[6, 12, 18, 24])
    return parser.parse_args()


def setup(args):
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    clip = create_model(args.model_name, args.img_size, pretrained=args.pretrain).eval()
    model = CLIP_Inplanted(clip, args.features_list).eval()
    data = MedDataset(args.data_path, args.obj, args.img_size, args.shot, args.iterate)
    with torch.no_grad():
        text = encode_text_with_prompt_ensemble(clip, REAL_NAME[args.obj], "cpu")
    return model, data, text


def patch_logits(tokens, text):
    tokens = tokens[0, 1:, :]
    return 100.0 * (tokens / tokens.norm(dim=-1, keepdim=True)) @ text     # (patches, 2)


def to_image(values, size):
    side = int(np.sqrt(values.shape[0]))
    grid = values.T.reshape(1, values.shape[1], side, side)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=True)


def memory_bank(model, normal_images):
    seg, det = [], []
    with torch.no_grad():
        for image in normal_images:
            _, seg_tokens, det_tokens = model(image[None])
            seg.append([t[0] for t in seg_tokens])
            det.append([t[0] for t in det_tokens])
    return ([torch.cat(level) for level in zip(*seg)], [torch.cat(level) for level in zip(*det)])


def test(args, model, data, text, seg_bank, det_bank):
    seg = CLASS_INDEX[args.obj] > 0
    zero, few, labels, masks = [], [], [], []
    for image, label, mask in torch.utils.data.DataLoader(data, batch_size=1):
        with torch.no_grad():
            _, seg_tokens, det_tokens = model(image)
        tokens, bank = (seg_tokens, seg_bank) if seg else (det_tokens, det_bank)
        distance = sum(to_image((1 - cos_sim(level_bank, t[0, 1:])).min(dim=0)[0][:, None],
                                args.img_size) for t, level_bank in zip(tokens, bank))
        if seg:
            zero.append(sum(to_image(patch_logits(t, text), args.img_size).softmax(dim=1)[:, 1]
                            for t in tokens).numpy())
            few.append(distance[0].numpy())
        else:
            zero.append(sum(patch_logits(t, text).softmax(dim=-1)[:, 1].mean()
                            for t in tokens).item())
            few.append(distance.mean().item())
        labels.append(int(label))
        masks.append((mask[0] > 0.5).numpy().astype(int))
    zero, few = np.array(zero), np.array(few)
    fused = 0.5 * (zero - zero.min()) / (zero.max() - zero.min()) + \
        0.5 * (few - few.min()) / (few.max() - few.min())
    if seg:
        pixel = roc_auc_score(np.array(masks).ravel(), fused.ravel())
        image = roc_auc_score(labels, fused.reshape(len(fused), -1).max(axis=1))
        print(f"{args.obj} pAUC : {round(pixel, 4)}\n{args.obj} AUC : {round(image, 4)}")
        return pixel + image
    image = roc_auc_score(labels, fused)
    print(f"{args.obj} AUC : {round(image, 4)}")
    return image


def main():
    args = arguments()
    model, data, text = setup(args)
    seg = CLASS_INDEX[args.obj] > 0
    normal, _ = augment(data.fewshot_norm_img)
    abnormal, abnormal_masks = augment(data.fewshot_abnorm_img, data.fewshot_abnorm_mask)
    if abnormal_masks is None:
        abnormal_masks = torch.zeros(len(abnormal), 1, args.img_size, args.img_size)
    train = torch.utils.data.TensorDataset(
        torch.cat([abnormal, normal]), torch.cat([abnormal_masks, torch.zeros_like(normal[:, :1])]),
        torch.cat([torch.ones(len(abnormal)), torch.zeros(len(normal))]))
    seg_optimizer = torch.optim.Adam(model.seg_adapters.parameters(), lr=args.learning_rate,
                                     betas=(0.5, 0.999))
    det_optimizer = torch.optim.Adam(model.det_adapters.parameters(), lr=args.learning_rate,
                                     betas=(0.5, 0.999))
    focal, dice, bce = FocalLoss(), BinaryDiceLoss(), torch.nn.BCEWithLogitsLoss()
    best = 0
    for epoch in range(args.epoch):
        losses = []
        for image, mask, label in torch.utils.data.DataLoader(train, batch_size=1, shuffle=True):
            _, seg_tokens, det_tokens = model(image)
            loss = sum(bce(patch_logits(t, text).softmax(dim=-1)[:, 1].mean()[None], label)
                       for t in det_tokens)
            if seg:
                mask = (mask[0] > 0.5).float()                                  # (1, S, S)
                for t in seg_tokens:
                    probs = to_image(patch_logits(t, text), args.img_size).softmax(dim=1)
                    loss = loss + focal(probs, mask) + dice(probs[:, 1], mask)
            seg_optimizer.zero_grad()
            det_optimizer.zero_grad()
            loss.backward()
            det_optimizer.step()
            if seg:
                seg_optimizer.step()
            losses.append(loss.item())
        print("Loss: ", np.mean(losses))
        result = test(args, model, data, text, *memory_bank(model, normal))
        if result > best:           # the official selection: the best test score is saved
            best = result
            if args.save_model == 1:
                torch.save({"seg_adapters": model.seg_adapters.state_dict(),
                            "det_adapters": model.det_adapters.state_dict()},
                           os.path.join(args.save_path, f"{args.obj}.pth"))


if __name__ == "__main__":
    main()
