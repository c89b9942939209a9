"""Benchmark: batched TextSpan vs the literal per-head paper loop.

Setting of the issue: ViT-B-16's last 4 layers (48 heads), 2,000 images,
3,498 texts, d_out 512, rank 80, 20 texts per head, CPU float32. Head outputs
are synthetic (seeded): per head a 64-dim subspace (head_dim of B-16) with a
decaying spectrum, a mean offset and small isotropic noise, which is the shape
of real head outputs. Texts are random unit vectors.

The literal loop is timed on the first `--literal-heads` heads and
extrapolated to all heads (it costs ~1.5-2 s per head); pass
`--literal-heads 48` to time it on all of them.

    python -m bench.textspan [--literal-heads 8] [--threads 2]   # from the repo root
"""

import argparse
import resource
import time

import torch

from core.heads.textspan import text_span, text_span_reference


def synthetic_head_outputs(n_head, n_image, d_out, seed, head_dim=64, noise=0.02):
    """[head, image, d_out] float32, built one head at a time to hold it once."""
    gen = torch.Generator().manual_seed(seed)
    outputs = torch.empty(n_head, n_image, d_out)
    spectrum = 1.0 / (1.0 + torch.arange(head_dim) / 8.0)
    for head in range(n_head):
        basis = torch.linalg.qr(torch.randn(d_out, head_dim, generator=gen))[0].mT
        latent = torch.randn(n_image, head_dim, generator=gen) * spectrum
        offset = 0.5 * torch.randn(d_out, generator=gen)
        outputs[head] = latent @ basis + offset + noise * torch.randn(n_image, d_out, generator=gen)
    return outputs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=int, default=48)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--texts", type=int, default=3498)
    parser.add_argument("--d-out", type=int, default=512)
    parser.add_argument("--rank", type=int, default=80)
    parser.add_argument("--n-texts", type=int, default=20)
    parser.add_argument("--literal-heads", type=int, default=8, help="heads to run the literal loop on (extrapolated)")
    parser.add_argument("--criterion", default="std", choices=["std", "explained_variance"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    outputs = synthetic_head_outputs(args.heads, args.images, args.d_out, args.seed)
    text_generator = torch.Generator().manual_seed(args.seed + 1)
    texts = torch.nn.functional.normalize(torch.randn(args.texts, args.d_out, generator=text_generator), dim=1)
    kwargs = dict(n_texts=args.n_texts, rank=args.rank, criterion=args.criterion)
    print(f"heads {args.heads}, images {args.images}, texts {args.texts}, d_out {args.d_out}, rank {args.rank}, "
          f"n_texts {args.n_texts}, criterion {args.criterion}, threads {args.threads}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"head outputs: {outputs.numel() * 4 / 2**20:.0f} MiB float32; peak RSS before TextSpan (torch + inputs): {rss_before:.0f} MiB")

    start, start_cpu = time.perf_counter(), time.process_time()
    ours = text_span(outputs, texts, **kwargs)
    ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    rss_after_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    n_literal = min(args.literal_heads, args.heads)
    start, start_cpu = time.perf_counter(), time.process_time()
    literal, _ = text_span_reference(outputs[:n_literal], texts, **kwargs)
    literal_s = (time.perf_counter() - start) * args.heads / n_literal
    literal_cpu = (time.process_time() - start_cpu) * args.heads / n_literal

    same_texts = (ours.text_indices[:n_literal] == literal.text_indices).all(dim=1)
    difference = (ours.variance_explained[:n_literal].double() - literal.variance_explained.double()).abs().max()
    extrapolated = "" if n_literal == args.heads else f" (timed on {n_literal} heads, extrapolated x{args.heads / n_literal:.1f})"
    # CPU time is reported too: it is less disturbed by other jobs on a shared machine.
    print(f"ours (batched, all {args.heads} heads): wall {ours_s:7.2f} s ({ours_s / args.heads * 1000:.0f} ms/head), cpu {ours_cpu:7.2f} s")
    print(f"literal per-head loop:             wall {literal_s:7.2f} s ({literal_s / args.heads * 1000:.0f} ms/head), "
          f"cpu {literal_cpu:7.2f} s{extrapolated}")
    print(f"speed-up: wall {literal_s / ours_s:.1f}x, cpu {literal_cpu / ours_cpu:.1f}x")
    print(f"identical selected texts: {int(same_texts.sum())}/{n_literal} heads compared")
    print(f"max |variance explained ours - literal|: {difference:.2e}")
    print(f"mean cumulative variance after {args.n_texts} texts: {ours.cumulative_variance[:, -1].mean():.3f}")
    print(f"peak RSS after ours: {rss_after_ours:.0f} MiB; after literal: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
