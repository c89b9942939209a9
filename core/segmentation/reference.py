"""Literal transcriptions: the oracles the segmentation tests and benchmark hold the fast code to.

- `paper_eval_image` / `paper_dataset_metrics`: the papers' per-image evaluation (`eval_batch` of P1's
  `compute_segmentations.py`, P2's `compute_segmentation.py`) and their metric helpers
  (`batch_pix_accuracy`, `batch_intersection_union`, `get_ap_scores` of `utils/segmentation_utils.py`,
  from Chefer et al.'s `utils/metrices.py`), step by step on torch tensors, batch size 1.
- `literal_heads_map`: the heads map as the sum of the literal spatial decomposition
  (`core.engine.reference.literal_direct_effects`), projected on the text.
- `original_spatial_path`: the papers' spatial forward (`forward_per_head` of their modified open_clip),
  which materialises every query's per-head, per-source-token output [token, token, head, d_model] in
  every layer and keeps the class-token row. Only for the benchmark and its equality test.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from core.engine.reference import literal_direct_effects


# ---------------------------------------------------------------- the papers' metric code

def _pix_accuracy(predict: torch.Tensor, target: torch.Tensor):
    _, predict = torch.max(predict, 0)
    predict = predict.cpu().numpy() + 1
    target = target.cpu().numpy() + 1
    pixel_labeled = np.sum(target > 0)
    pixel_correct = np.sum((predict == target) * (target > 0))
    assert pixel_correct <= pixel_labeled
    return pixel_correct, pixel_labeled


def _intersection_union(predict: torch.Tensor, target: torch.Tensor, nclass: int):
    _, predict = torch.max(predict, 0)
    mini, maxi, nbins = 1, nclass, nclass
    predict = predict.cpu().numpy() + 1
    target = target.cpu().numpy() + 1
    predict = predict * (target > 0).astype(predict.dtype)
    intersection = predict * (predict == target)
    area_inter, _ = np.histogram(intersection, bins=nbins, range=(mini, maxi))
    area_pred, _ = np.histogram(predict, bins=nbins, range=(mini, maxi))
    area_lab, _ = np.histogram(target, bins=nbins, range=(mini, maxi))
    area_union = area_pred + area_lab - area_inter
    assert (area_inter <= area_union).all()
    return area_inter, area_union


def _ap_scores(predict: torch.Tensor, target: torch.Tensor, ignore_index: int = -1):
    total = []
    for pred, tgt in zip(predict, target):
        target_expand = tgt.unsqueeze(0).expand_as(pred)
        target_expand_numpy = target_expand.data.cpu().numpy().reshape(-1)
        x = torch.zeros_like(target_expand)
        t = tgt.unsqueeze(0).clamp(min=0).long()
        target_1hot = x.scatter_(0, t, 1)
        predict_flat = pred.data.cpu().numpy().reshape(-1)
        target_flat = target_1hot.data.cpu().numpy().reshape(-1)
        p = predict_flat[target_expand_numpy != ignore_index]
        t = target_flat[target_expand_numpy != ignore_index]
        total.append(np.nan_to_num(average_precision_score(t, p)))
    return total


def paper_eval_image(grid: torch.Tensor, labels: torch.Tensor, patch: int, *, clamp: bool, threshold="mean"):
    """One image as the papers' `eval_batch` scores it, from the raw patch grid [G, G] and the label map
    [H, W] (long, {0, 1}). clamp / threshold: P1 (heads) clamps and thresholds at the mean, P2 (neurons)
    does neither and thresholds at 0.5. Returns (correct, labeled, inter [2], union [2], ap [1], Res)."""
    results = grid.float()[None]  # [1, G, G]
    labels = labels.long()[None]  # [1, H, W]
    Res = torch.nn.functional.interpolate(results[:, np.newaxis], scale_factor=patch, mode="bilinear")
    if clamp:
        Res = torch.clip(Res, 0, Res.max())
    Res = (Res - Res.min()) / (Res.max() - Res.min())
    ret = Res.mean() if threshold == "mean" else threshold
    Res_1 = Res.gt(ret).type(Res.type())
    Res_0 = Res.le(ret).type(Res.type())
    Res_1_AP = Res
    Res_0_AP = 1 - Res
    Res_1[Res_1 != Res_1] = 0
    Res_0[Res_0 != Res_0] = 0
    Res_1_AP[Res_1_AP != Res_1_AP] = 0
    Res_0_AP[Res_0_AP != Res_0_AP] = 0
    output = torch.cat((Res_0, Res_1), 1)
    output_AP = torch.cat((Res_0_AP, Res_1_AP), 1)
    correct, labeled = _pix_accuracy(output[0].data.cpu(), labels[0])
    inter, union = _intersection_union(output[0].data.cpu(), labels[0], 2)
    ap = np.nan_to_num(_ap_scores(output_AP, labels))
    return correct, labeled, inter, union, ap, Res[0, 0]


def paper_dataset_metrics(per_image: list) -> dict[str, float]:
    """pixAcc, mIoU, mAP as the papers' main loop accumulates `paper_eval_image` results."""
    total_inter, total_union, total_correct, total_label = np.int64(0), np.int64(0), np.int64(0), np.int64(0)
    total_ap = []
    for correct, labeled, inter, union, ap, *_ in per_image:
        total_correct += correct.astype("int64")
        total_label += labeled.astype("int64")
        total_inter += inter.astype("int64")
        total_union += union.astype("int64")
        total_ap += [ap]
    pixAcc = np.float64(1.0) * total_correct / (np.spacing(1, dtype=np.float64) + total_label)
    IoU = np.float64(1.0) * total_inter / (np.spacing(1, dtype=np.float64) + total_union)
    return {"pixel_accuracy": float(pixAcc), "miou": float(IoU.mean()), "map": float(np.mean(total_ap))}


# ---------------------------------------------------------------- the heads map

@torch.no_grad()
def literal_heads_map(visual: nn.Module, image: torch.Tensor, direction: torch.Tensor, *, convention: str = "paper",
                      heads: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """[G * G] (or [text, G * G] for directions [text, d_out]): sum over layers and heads (or `heads`) of each
    patch token's literal direct effect, projected on `direction` [d_out] and divided by |y| (image [3, H, W])."""
    parts = literal_direct_effects(visual, image, convention)
    tokens = parts["tokens"]  # [layer, head, token, d_out]
    total = torch.zeros(tokens.shape[2], tokens.shape[3])
    for layer in range(tokens.shape[0]):
        for head in range(tokens.shape[1]):
            if heads is None or (layer, head) in heads:
                total += tokens[layer, head]
    return (direction.float() @ total[1:].T) / parts["embedding"].norm()


# ---------------------------------------------------------------- the papers' spatial forward

@torch.no_grad()
def original_spatial_path(visual: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """[layer, head, token, d_out]: the papers' spatial decomposition (convention "paper", not divided by |y|),
    computed their way: each layer's attention output for every query, per head and source token,
    [token, token, head, d_model], is materialised, summed for the forward and sliced at the class-token row."""
    x = visual._embeds(image[None])[0]  # [token, d_model]
    rows = []
    for block in visual.transformer.resblocks:
        attn = block.attn
        heads, width = attn.num_heads, x.shape[-1]
        d_head = width // heads
        mean = x.mean(-1, keepdim=True)
        std = ((x - mean) ** 2).mean(-1, keepdim=True).add(block.ln_1.eps).sqrt()
        xn = (x - mean) / std * block.ln_1.weight + block.ln_1.bias
        q, k, v = (xn @ w.T + b for w, b in zip(attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)))
        q, k, v = (t.reshape(-1, heads, d_head).transpose(0, 1) for t in (q, k, v))  # [head, token, d_head]
        pattern = torch.softmax(q @ k.transpose(-1, -2) / d_head ** 0.5, dim=-1)  # [head, query, key]
        w_o = attn.out_proj.weight.T.reshape(heads, d_head, width)  # [head, d_head, d_model]
        value_out = torch.einsum("hkd,hdm->khm", v, w_o)  # [key, head, d_model]
        scale = block.ls_1.gamma if hasattr(block.ls_1, "gamma") else torch.ones(width)
        n_tokens = x.shape[0]
        per_query = torch.einsum("hqk,khm->qkhm", pattern, value_out)  # [query, key, head, d_model]
        per_query = (per_query + attn.out_proj.bias / (n_tokens * heads)) * scale
        rows.append(per_query[0].transpose(0, 1).clone())  # [head, key, d_model]
        x = x + per_query.sum((1, 2))
        del per_query
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    ln = visual.ln_post
    mu = x[0].mean()
    s = ((x[0] - mu) ** 2).mean().add(ln.eps).sqrt()
    n_layers, n_heads, n_tokens = len(rows), rows[0].shape[0], rows[0].shape[1]
    share = 1.0 / ((2 * n_layers + 1) * n_heads * n_tokens)
    stacked = torch.stack(rows)  # [layer, head, token, d_model]
    return (ln.weight * (stacked - share * mu) / s + share * ln.bias) @ visual.proj
