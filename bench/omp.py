"""Benchmark: core.neurons.sparse.omp vs scikit-learn's OMP (what the paper code runs).

Paper 2's `compute_sparse_decomposition.py` encodes every neuron's principal
component with `SparseCoder(transform_algorithm="omp")`, i.e.
`sklearn.decomposition.sparse_encode(..., algorithm="omp")`: a [text, text]
Gram matrix, copied once per target. Full size (3,072 targets, d_out 512,
30,000 texts, 128 terms) that takes ~40 min and ~11 GB, so scikit-learn is
timed on `--sklearn-rows` targets and extrapolated linearly, plus its Gram
precompute once (measured separately).

Each solver runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
Data: seeded Gaussian unit vectors (dictionary rows and targets), float32 like
the paper code's arrays. scikit-learn's float64 `orthogonal_mp` (no Gram) on
`--exact-rows` targets is the exact reference for agreement; the float32
`sparse_encode` is compared too (its float32 rounding can flip late picks).

    python bench/omp.py            # full size, several minutes
    python bench/omp.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import sparse_encode
from sklearn.linear_model import orthogonal_mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.neurons.sparse import SparseCode, omp  # noqa: E402
from core.settings import resolve_device  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small size: 256 targets, d 64, 4,000 texts, 32 terms")
    parser.add_argument("--targets", type=int, default=3072)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--texts", type=int, default=30_000)
    parser.add_argument("--terms", type=int, default=128)
    parser.add_argument("--sklearn-rows", type=int, default=256, help="targets timed with sklearn sparse_encode")
    parser.add_argument("--exact-rows", type=int, default=32, help="targets checked against float64 orthogonal_mp")
    parser.add_argument("--batch-size", type=int, default=None, help="core.neurons.sparse.omp batch_size (default: its own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="where ours runs: auto, cpu, cuda or cuda:N "
                        "(default: $CLIPSCOPE_DEVICE or auto); scikit-learn always runs on the CPU")
    parser.add_argument("--worker", choices=["ours", "sparse_encode", "orthogonal_mp"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.targets, args.dim, args.texts, args.terms = 256, 64, 4000, 32
        args.sklearn_rows, args.exact_rows = 64, 32
    return args


def make_data(args):
    """Seeded float32 unit-norm dictionary [text, d_out] and targets [batch, d_out]."""
    rng = np.random.default_rng(args.seed)
    dictionary = rng.standard_normal((args.texts, args.dim), dtype=np.float32)
    targets = rng.standard_normal((args.targets, args.dim), dtype=np.float32)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    return dictionary, targets


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args, dictionary, targets):
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    device = resolve_device(args.device)
    code = omp(torch.from_numpy(targets), torch.from_numpy(dictionary), args.terms, batch_size=args.batch_size,
               device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rows = max(args.sklearn_rows, args.exact_rows)
    dense = SparseCode(*(field[:rows].cpu() for field in code)).dense(args.texts).double().numpy()
    return {"seconds": seconds, "device": str(device)}, dense


def run_sparse_encode(args, dictionary, targets):
    start = time.perf_counter()
    gram = dictionary @ dictionary.T
    gram_seconds = time.perf_counter() - start
    start = time.perf_counter()
    dense = sparse_encode(targets[: args.sklearn_rows], dictionary, gram=gram, algorithm="omp", n_nonzero_coefs=args.terms)
    return {"gram_seconds": gram_seconds, "seconds": time.perf_counter() - start}, dense.astype(np.float64)


def run_orthogonal_mp(args, dictionary, targets):
    rows = targets[: args.exact_rows].astype(np.float64)
    start = time.perf_counter()
    dense = orthogonal_mp(X=dictionary.T.astype(np.float64), y=rows.T, n_nonzero_coefs=args.terms).T
    return {"seconds": time.perf_counter() - start}, dense


WORKERS = {"ours": run_ours, "sparse_encode": run_sparse_encode, "orthogonal_mp": run_orthogonal_mp}


def worker(args):
    warnings.simplefilter("ignore", RuntimeWarning)  # sklearn's early-stop warnings
    dictionary, targets = make_data(args)
    baseline = peak_rss_mb()
    result, dense = WORKERS[args.worker](args, dictionary, targets)
    result.update(peak_rss_mb=peak_rss_mb(), baseline_rss_mb=baseline)
    np.save(args.out + ".npy", dense)
    Path(args.out + ".json").write_text(json.dumps(result))


def launch(name, argv, folder, threads):
    out = os.path.join(folder, name)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, __file__, *argv, "--worker", name, "--out", out], check=True, env=env)
    return json.loads(Path(out + ".json").read_text()), np.load(out + ".npy")


def agreement(ours, theirs):
    """(fraction of rows with the same support, max |coefficient difference| on those rows)."""
    rows = min(len(ours), len(theirs))
    same = [set(np.flatnonzero(a)) == set(np.flatnonzero(b)) for a, b in zip(ours[:rows], theirs[:rows])]
    diffs = [np.abs(a - b).max() for a, b, s in zip(ours[:rows], theirs[:rows], same) if s]
    return float(np.mean(same)), float(max(diffs, default=float("nan"))), rows


def main():
    args = parse_args()
    if args.worker:
        return worker(args)
    argv = sys.argv[1:]
    print(f"OMP of {args.targets} unit targets, d_out {args.dim}, {args.texts} texts, {args.terms} terms, {args.threads} threads")
    with tempfile.TemporaryDirectory() as folder:
        ours, ours_code = launch("ours", argv, folder, args.threads)
        print(f"ours ({ours['device']}): {ours['seconds']:.1f} s, peak RSS {ours['peak_rss_mb']:.0f} MB (data alone {ours['baseline_rss_mb']:.0f} MB)")
        skl, skl_code = launch("sparse_encode", argv, folder, args.threads)
        per_target = skl["seconds"] / args.sklearn_rows
        total = skl["gram_seconds"] + per_target * args.targets
        print(f"sklearn sparse_encode (float32, = SparseCoder): Gram precompute {skl['gram_seconds']:.1f} s, "
              f"{skl['seconds']:.1f} s for {args.sklearn_rows} targets ({per_target:.3f} s/target), "
              f"extrapolated to {args.targets}: {total:.0f} s; peak RSS {skl['peak_rss_mb']:.0f} MB (data alone {skl['baseline_rss_mb']:.0f} MB)")
        exact, exact_code = launch("orthogonal_mp", argv, folder, args.threads)
        print(f"sklearn orthogonal_mp (float64, no Gram): {exact['seconds']:.1f} s for {args.exact_rows} targets "
              f"({exact['seconds'] / args.exact_rows:.3f} s/target); peak RSS {exact['peak_rss_mb']:.0f} MB")
    print(f"speed-up vs sparse_encode (extrapolated, incl. Gram): {total / ours['seconds']:.1f}x")
    print(f"speed-up vs orthogonal_mp float64 (extrapolated): {exact['seconds'] / args.exact_rows * args.targets / ours['seconds']:.1f}x")
    for name, code in [("orthogonal_mp float64", exact_code), ("sparse_encode float32", skl_code)]:
        same, diff, rows = agreement(ours_code, code)
        print(f"agreement with {name} on {rows} targets: same support {same:.1%}, max |coef diff| {diff:.2e}")


if __name__ == "__main__":
    main()
