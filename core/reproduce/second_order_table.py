"""Paper 2's table 1 (paper 2, table 1, and its code compute_ablations.py): ViT-B-32, MLP layer 9. Zero-shot accuracy after mean-ablating
every neuron's indirect effect (activations replaced by their per-token means, the model re-run:
`core.neurons.indirect`) vs every neuron's second-order effect (the lens: phi_n replaced by its mean,
`core.neurons.texts.ablated_representations`), and the share of variance the first PC explains for each.

Means (activations, phi) and PCs come from --means-from (the paper: every 250th ImageNet train image, 5,124);
accuracies on --images (the paper: ImageNet val). The PC share is the same statistic for both effects: per
neuron, the top-100 images by the norm of the deviation from the mean, the first singular vector of those
deviations and its share of their energy, averaged over neurons (`core.neurons.stats`); the paper does not
state its exact definition. Indirect effects are computed on the first --extra pc_images images of
--means-from (default 1,000) because each needs a re-run of the later layers per neuron.
"""

from __future__ import annotations

from core.reproduce.published import P2_ABLATIONS, P2_MODEL

LAYER = 9
PC_IMAGES = 1000


def run(options, log) -> dict:
    import torch

    from core.inputs import parse_images
    from core.engine.models import load_clip
    from core.errors import ConfigError
    from core.neurons.indirect import ablated_embeddings, activation_means, indirect_stats
    from core.neurons.stats import neuron_stats
    from core.neurons.texts import neuron_ablation_accuracies
    from core.reproduce.data import classifier, labelled_set

    if not options.means_from:
        raise ConfigError("p2-ablations needs --means-from: the images the means and PCs come from (the paper: every "
                          "250th ImageNet train image), e.g. world:60:4 for a smoke test")
    labelled = labelled_set(options.images, options.label_column)
    images = labelled.images
    if options.limit:
        images = type(images)(images.paths[:options.limit], images.labels[:options.limit], images.classnames,
                              f"the first {options.limit} of {images.description}")
    reference = parse_images(options.means_from, "--means-from", generator_split="train")
    rows, settings = [], []
    for spec in options.models or (P2_MODEL,):
        bundle = load_clip(spec, device=options.device)
        visual = bundle.model.visual
        layer = int(options.extra.get("layer", LAYER if spec == P2_MODEL else bundle.info.n_layers - 2))
        weights, described = classifier(bundle, labelled, options.label_column)
        size = options.batch_size

        def reference_batches(limit=None):
            shard = reference if limit is None else reference.slice(0, min(limit, len(reference)))
            return ((ids, pixels) for ids, pixels in shard.batches(bundle.preprocess, size))

        log(f"{spec} layer {layer}: activation means and second-order statistics over {len(reference)} images")
        act_means, n_means = activation_means(visual, layer, (pixels for _, pixels in reference_batches()))
        k = min(100, len(reference))
        stats = neuron_stats(visual, layer, reference_batches, k=k)
        labels = torch.tensor(images.labels)

        def evaluation_batches():
            from core.engine.images import iter_image_batches

            for indices, pixels in iter_image_batches(images.paths, bundle.preprocess, size):
                yield pixels, labels[indices]

        second, counted = neuron_ablation_accuracies(visual, stats, evaluation_batches(), weights.to(bundle.device))
        hits = 0
        for pixels, truth in evaluation_batches():
            ablated = ablated_embeddings(visual, pixels.to(bundle.device), layer, act_means)
            hits += int(((ablated @ weights.to(ablated).T).argmax(-1).cpu() == truth).sum())
        indirect_accuracy = hits / counted
        pc_images = int(options.extra.get("pc_images", PC_IMAGES))
        log(f"{spec} layer {layer}: indirect effects of every neuron over {min(pc_images, len(reference))} images")
        indirect = indirect_stats(visual, layer, lambda: reference_batches(pc_images), act_means,
                                  k=min(k, pc_images, len(reference)))
        published = P2_ABLATIONS if spec == P2_MODEL and layer == P2_ABLATIONS["layer"] else {}
        rows += [
            {"model": spec, "layer": layer, "quantity": "accuracy, unablated", "ours": 100 * second["baseline"],
             "published": None},
            {"model": spec, "layer": layer, "quantity": "accuracy, indirect effects mean-ablated",
             "ours": 100 * indirect_accuracy, "published": published.get("indirect accuracy")},
            {"model": spec, "layer": layer, "quantity": "accuracy, second-order effects mean-ablated",
             "ours": 100 * second["mean-ablated layer"], "published": published.get("second-order accuracy")},
            {"model": spec, "layer": layer, "quantity": "first-PC variance share, indirect",
             "ours": 100 * float(indirect["pc_variance"].mean()), "published": published.get("indirect PC-1 variance")},
            {"model": spec, "layer": layer, "quantity": "first-PC variance share, second-order",
             "ours": 100 * float(stats.pc_variance.mean()), "published": published.get("second-order PC-1 variance")},
        ]
        settings.append({"model": bundle.info.identity(), "device": str(bundle.device), "classifier": described,
                         "evaluated_on": images.description, "evaluated_images": counted,
                         "means_from": reference.description,
                         "means_images": n_means, "pc_images_indirect": int(indirect["n_images"]), "top_k": k,
                         "second_order_ablations": {name: 100 * v for name, v in second.items()}})
    return {"rows": rows, "published": P2_ABLATIONS, "settings": settings, "data": labelled.description,
            "notes": "second-order: the lens (frozen attention and ln_1 statistics), paper convention x100/|y|; "
                     "indirect: activations replaced by per-token means and the later layers re-run; PC share = "
                     "energy of the top-k deviations along their first singular vector, mean over neurons"}
