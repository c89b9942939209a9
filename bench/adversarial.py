"""Benchmark: time per stage of the adversarial generator on a toy model; Stable Diffusion images/s on a GPU.

Stages (core.adversarial): direction, bases, neurons, word scores, filter, top words, classifier, similar words
(baseline), descriptions, images (world generator), verdicts. Printed as seconds and as a share of the total, and
the rate of the image and verdict stages per image. With a CUDA GPU and SD-Turbo in the Hugging Face cache, also
images per second for the `sd` generator at its default steps (one step, 512 px); otherwise that line says why not.

    python -m bench.adversarial [--model toy-biased] [--images 100] [--repeats 3] [--threads 2]   # repo root
"""

import argparse
import time

import torch


def stage_times(model: str, images: int, repeats: int) -> None:
    from core.adversarial.pipeline import AdversarialConfig, run_adversarial
    from core.engine.models import load_clip

    bundle = load_clip(model)
    config = AdversarialConfig("square", "triangle", images=images, repeats=repeats, baselines=True)
    run_adversarial(bundle, AdversarialConfig("square", "triangle", images=4, repeats=1))  # warm caches and imports
    start = time.perf_counter()
    report = run_adversarial(bundle, config)
    total = time.perf_counter() - start
    n_images = sum(len(a.images.images) for a in report.attempts)
    print(f"model {model}, square -> triangle, {images} images x {repeats} repeats x {len(config.methods())} methods "
          f"= {n_images} images, world generator, threads {torch.get_num_threads()}")
    print(f"{'stage':16s} {'seconds':>9s} {'share':>7s}")
    for stage, seconds in sorted(report.seconds.items(), key=lambda item: -item[1]):
        print(f"{stage:16s} {seconds:9.3f} {100 * seconds / total:6.1f}%")
    print(f"{'total':16s} {total:9.3f}")
    for stage in ("images", "verdicts"):
        print(f"{stage}: {1000 * report.seconds.get(stage, 0.0) / max(n_images, 1):.2f} ms per image")
    summary = report.summary()
    print("success: " + ", ".join(f"{m} {100 * r['success_mean']:.1f}%" for m, r in summary.items()))


def sd_rate(n_images: int) -> None:
    from core.adversarial.defaults import SD_REPO, SD_REVISION, SD_STEPS
    from core.adversarial.generators import StableDiffusionGenerator, load_sd_pipeline
    from core.errors import CoreError

    if not torch.cuda.is_available():
        print("sd: skipped, no CUDA GPU on this machine")
        return
    try:
        pipe = load_sd_pipeline(SD_REPO, SD_REVISION, device="cuda", local_files_only=True)
    except CoreError as err:
        print(f"sd: skipped, {err}")
        return
    generator = StableDiffusionGenerator(pipe, steps=SD_STEPS, checkpoint=f"{SD_REPO}@{SD_REVISION[:12]}")
    generator.generate(["a photo of a dog"] * 4, seeds=list(range(4)))  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    generator.generate([f"a photo of a dog, {i}" for i in range(n_images)], seeds=list(range(n_images)))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"sd: {generator.label}: {n_images} images in {seconds:.2f} s = {n_images / seconds:.2f} images/s "
          f"on {torch.cuda.get_device_name()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="toy-biased")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sd-images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stage_times(args.model, args.images, args.repeats)
    sd_rate(args.sd_images)


if __name__ == "__main__":
    main()
