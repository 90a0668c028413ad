"""Few-shot test with the official command line: adapters loaded from --save_path/<obj>.pth."""
import os

import torch
from train_few import arguments, memory_bank, setup, test
from utils import augment


def main():
    args = arguments()
    model, data, text = setup(args)
    adapters = torch.load(os.path.join(args.save_path, f"{args.obj}.pth"), weights_only=True)
    model.seg_adapters.load_state_dict(adapters["seg_adapters"])
    model.det_adapters.load_state_dict(adapters["det_adapters"])
    normal, _ = augment(data.fewshot_norm_img)
    test(args, model, data, text, *memory_bank(model, normal))


if __name__ == "__main__":
    main()
