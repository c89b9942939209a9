"""The Heads tab's mean-ablation panel: pick heads (or take those whose TextSpan labels name a word) and see the
zero-shot shape accuracy on the toy world's planted-bias groups change, against every head set of the same size.

It calls what `python -m core toy removal` calls (core.world.bias_removal: the grouped held-out scenes of the planted
bias, means from other held-out scenes, core.heads.spurious.spurious_report with its exhaustive baseline), so the
panel's numbers are the command's.

>>> view = measure_ablation("toy-biased", "", "background", per_group=50)
>>> view.summary, view.groups, view.link.query
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core import budget, settings
from core.errors import ConfigError, CoreError
from core.explorer import access
from core.explorer.common import LinkPanel, Progress, link_panel, progress_or_silent, without_paths
from core.links.codec import ViewState

DEFAULT_LABEL = "background"  # the heads whose labels name a background: the planted cue's carriers
PER_GROUP = 50
LIMITS = {"public": 100, "local": 1000}  # held-out scenes per group
SUMMARY_COLUMNS = ["model", "overall %", "worst group %", "worst group"]


@dataclass(frozen=True)
class AblationView:
    info: str
    summary: list[dict]  # unmodified, chosen heads ablated, random sets (mean, std), percentile
    groups: list[dict]  # per group: unmodified, ablated
    labels: list[dict]  # each head's top TextSpan texts and whether it was chosen
    link: LinkPanel
    report: object  # core.heads.spurious.SpuriousReport


def _model(spec: str | None):
    """The panel's model (toy-biased unless another is typed), through the one loader and its allow-list."""
    from core import engine

    spec = access.check_length(spec, "The model spec").strip() or settings.PANEL_MODELS["ablation"]
    return engine.load_clip(spec)


def _words(label: str | None) -> tuple[str, ...] | None:
    """None: the backgrounds (bias_removal's default words); else the comma-separated words a label must name."""
    label = access.check_length(label, "The label words").strip().lower()
    if label in ("", DEFAULT_LABEL, "backgrounds"):
        return None
    words = tuple(dict.fromkeys(w.strip() for w in label.split(",") if w.strip()))
    if any(not w.replace(" ", "").replace("-", "").isalnum() for w in words):
        raise ConfigError("label words are letters and digits, comma-separated, e.g. dotted,striped")
    return words


def _cost(bundle, images: int) -> budget.Cost:
    sizes = budget.model_sizes(bundle)
    seconds = images * budget.image_seconds(sizes, passes=2) + 10.0  # + the head-set population (8,008 on the toy)
    return budget.Cost("this mean-ablation", int(budget.forward_bytes(sizes) * 2), seconds,
                       "the scenes per group")


def measure_ablation(spec: str | None, raw_heads: str | None, label: str | None = DEFAULT_LABEL, *,
                     per_group=PER_GROUP, bases: str | None = None, progress: Progress | None = None) -> AblationView:
    """Mean-ablate the typed heads (or those whose top TextSpan texts name the label's words) and measure shape
    accuracy per planted-bias group against every head set of the same size."""
    from core.artifacts.hub import resolve_bases_source
    from core.explorer.common import cached_artifact
    from core.heads.outputs import check_heads, parse_heads
    from core.world.bias import SHIPPED, PlantedBias
    from core.world.bias_removal import DEFAULT_SHARE, DEFAULT_TOP, background_heads, bias_removal_report

    progress = progress_or_silent(progress)
    limit = LIMITS["public" if settings.public() else "local"]
    per_group = access.check_count(per_group, "scenes per group", 4, limit)
    typed = access.check_length(raw_heads, "The heads").strip()
    words = _words(label)
    bundle = _model(spec)
    progress(0.05, desc="reading the heads' TextSpan labels")
    source = resolve_bases_source(bundle.info.spec, access.check_bases_source(bases))
    labels = []
    if source:
        artifact = cached_artifact(source, bundle.info.identity())
        try:
            heads, provenance, labels = background_heads(artifact, **({"words": words} if words else {}))
        except CoreError:  # no head's labels name the words, or bases without TextSpan: typed heads still work
            if not typed:
                raise
        provenance = without_paths(provenance) if not typed else provenance
    elif not typed:
        raise ConfigError(f"no TextSpan labels for {bundle.info.spec}: type the heads to ablate (e.g. 3.1,3.3)")
    if typed:
        heads = check_heads(parse_heads(typed), bundle.info)
        provenance = "picked in the UI"
        labels = [{**row, "chosen": (row["layer"], row["head"]) in heads} for row in labels]
    budget.admit(_cost(bundle, 4 * per_group + 500))
    progress(0.15, desc="mean-ablating on the planted-bias groups")
    report = bias_removal_report(bundle, PlantedBias.parse(SHIPPED), heads, provenance, n_per_group=per_group)
    progress(0.95, desc="tables")
    return _view(bundle, report, heads, typed, words, per_group, labels, DEFAULT_TOP, DEFAULT_SHARE)


def _percent(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(100 * value, 2)


def _view(bundle, report, heads, typed: str, words, per_group: int, labels, top: int, share: float) -> AblationView:
    from core.heads.spurious import describe_heads

    summary = report.baseline.summary(report.ablated)
    names = report.group_names
    rows = [{"model": "unmodified", "overall %": _percent(report.base.overall),
             "worst group %": _percent(report.base.worst), "worst group": names[report.base.worst_group]},
            {"model": f"{describe_heads(heads)} mean-ablated", "overall %": _percent(report.ablated.overall),
             "worst group %": _percent(report.ablated.worst), "worst group": names[report.ablated.worst_group]},
            {"model": f"random head sets: mean ({report.baseline.describe()})",
             "overall %": _percent(summary["overall"]["mean"]), "worst group %": _percent(summary["worst"]["mean"]),
             "worst group": ""},
            {"model": "random head sets: std", "overall %": _percent(summary["overall"]["std"]),
             "worst group %": _percent(summary["worst"]["std"]), "worst group": ""},
            {"model": "chosen set's percentile among them", "overall %": round(summary["chosen_percentile_overall"], 1),
             "worst group %": round(summary["chosen_percentile_worst"], 1), "worst group": ""}]
    groups = [{"group": name, "unmodified %": _percent(b), "ablated %": _percent(a)}
              for name, b, a in zip(names, report.base.per_group, report.ablated.per_group)]
    label_rows = [{"head": f"L{r['layer']}H{r['head']}", "chosen": "yes" if r["chosen"] else "",
                   f"top {top} texts": "; ".join(r["texts"])} for r in labels]
    what = typed or ("label:" + ",".join(words) if words else f"label:{DEFAULT_LABEL}")
    state = ViewState("heads", model=bundle.info.spec, ablate=what.replace(" ", ""), images=per_group)
    command = (f"python -m core toy removal --model {bundle.info.spec} --n {per_group}"
               + (f" --heads {','.join(f'{l}.{h}' for l, h in heads)}" if typed else "")
               + (f" --words {','.join(words)}" if words and not typed else ""))
    chosen = (f"picked by hand: {describe_heads(heads)}" if typed else
              f"{describe_heads(heads)}: at least {share:.0%} of their top {top} TextSpan texts name "
              + (", ".join(words) if words else "a background"))
    info = (f"**Model:** {bundle.info.display_name} (`{bundle.info.spec}`)  \n**Heads:** {chosen}  \n"
            f"**Evaluated on:** {per_group} uniform held-out scenes per planted-bias group ({len(names)} groups: "
            f"{', '.join(names)}); zero-shot shape classifier over {', '.join(report.classnames)}; means from "
            f"{without_paths(report.means_from)}; convention {report.convention}, direct-effect mean-ablation.  \n"
            f"**Random baseline:** {report.baseline.describe()}; the chosen set's worst group is at percentile "
            f"{summary['chosen_percentile_worst']:.1f} ({100 * summary['share_at_least_chosen_worst']:.2f}% of the sets "
            f"do at least as well).  \nSame numbers from the command line: `{command}`")
    return AblationView(info, rows, groups, label_rows, link_panel(state, [command]), report)
