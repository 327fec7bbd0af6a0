"""The built-in model's forward cost per image against resnet18's, at the input sizes its choice weighed.

Ready batches (no decoding), fp32, every core, untrained weights (speed does not depend on them); the candidates
interleaved in one process, each round timing every one once, the best round kept: a shared machine's load
then touches them alike. Prints images/s and the cost as a multiple of resnet18 at 224 px (issue 33).

    .venv/bin/python scripts/bench_builtin_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from siamsearch.core.config import EncoderConfig
from siamsearch.core.model import build_encoder
from siamsearch.training.recipes import COPIES_ENCODER

BATCH = 64


def candidates() -> dict[str, EncoderConfig]:
    """resnet18 at 224 px, the built-in v1 (no grey view), and v2 at 96, 128 (shipped) and 160 px."""
    v2 = dataclasses.replace(COPIES_ENCODER, pretrained=False)
    return {"resnet18@224": EncoderConfig(backbone="resnet18", image_size=224, dim=128, head="linear"),
            "builtin v1 (128, x1.41)": dataclasses.replace(v2, test_grey=False),
            **{f"builtin v2 @{size}": dataclasses.replace(v2, image_size=size) for size in (96, 128, 160)}}


@torch.inference_mode()
def main() -> None:
    """Time each candidate's forward over `--rounds` interleaved rounds; print the best rate and its cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configs = candidates()
    models = {name: build_encoder(cfg).eval() for name, cfg in configs.items()}
    rates: dict[str, float] = dict.fromkeys(configs, 0.0)
    for _ in range(args.rounds):
        for name, model in models.items():
            x = torch.rand(BATCH, 3, configs[name].image_size, configs[name].image_size)
            model(x[:8])  # warm
            start = time.perf_counter()
            model(x)
            rates[name] = max(rates[name], BATCH / (time.perf_counter() - start))
    for name, rate in rates.items():
        print(f"{name:26s} {rate:7.1f} images/s  cost x{rates['resnet18@224'] / rate:.2f} of resnet18@224")


if __name__ == "__main__":
    main()
