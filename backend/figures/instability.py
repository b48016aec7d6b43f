"""The instability view (Wortsman et al. 2023): each attention layer's largest pre-softmax logit over training
(log y) and its attention entropy, the output's log Z and z-loss, the gradient's RMS per parameter group
against Adam's ε, and the update's RMS against the gradient's; a dotted line marks where each loss spike began."""

from typing import Any

from backend.figures.base import Figure, Options, Series, Source, View, latest, layout, line, vline

TITLE = "Transformer instabilities"
PROBES = ["instability"]
ANALYSES: list[str] = []
SPIKE_COLOR = "#cf222e"


def _per_site(source: Source, kind: str) -> dict[str, str]:
    prefix = f"instability/{kind}/"
    return {name: name.removeprefix(prefix) for name in sorted(source.names(prefix))}


def _chart(element: str, title: str, ylog: bool, labels: dict[str, str], source: Source, spikes: list[dict[str, Any]]) -> Figure:
    found = source.series(list(labels))
    chart = layout(title, ylog) | {"shapes": spikes}
    data = [line(found.get(name), label, name, mode="lines+markers", marker={"size": 4}) for name, label in labels.items()]
    return Figure(id=element, data=data, layout=chart)


def _loss(source: Source, spikes: Series | None, shapes: list[dict[str, Any]]) -> Figure:
    loss = source.series(["train/loss"]).get("train/loss")
    data = [line(loss, "training loss", "train/loss")]
    if spikes is not None and loss is not None:
        at = dict(zip(loss.steps, loss.values, strict=True))
        data.append(
            {
                "name": "spike begins",
                "x": spikes.steps,
                "y": [at.get(s) for s in spikes.steps],
                "mode": "markers",
                "marker": {"color": SPIKE_COLOR, "size": 9, "symbol": "triangle-up"},
                "customdata": spikes.values,
                "hovertemplate": "step %{x}: loss %{y:.4g}, %{customdata:.3g}× the running median<extra></extra>",
            }
        )
    return Figure(
        id="instability-loss", data=data, layout=layout("Training loss, and where each spike began", ylog=True) | {"shapes": shapes}
    )


def _update_against_gradient(source: Source, eps: float | None) -> Figure:
    """Each group's update RMS (per unit lr) against its gradient RMS, one marker per probed step."""
    grads = _per_site(source, "grad_rms")
    found = source.series([*grads, *(name.replace("/grad_rms/", "/update_rms/") for name in grads)])
    data = []
    for name, group in grads.items():
        g, u = found.get(name), found.get(name.replace("/grad_rms/", "/update_rms/"))
        if g is None or u is None:
            continue
        updates = dict(zip(u.steps, u.values, strict=True))
        steps = [s for s in g.steps if s in updates]
        data.append(
            {
                "name": group,
                "x": [v for s, v in zip(g.steps, g.values, strict=True) if s in updates],
                "y": [updates[s] for s in steps],
                "customdata": steps,
                "mode": "lines+markers",
                "marker": {"size": 5},
                "hovertemplate": f"{group}, step %{{customdata}}: gradient RMS %{{x:.3g}}, update RMS %{{y:.3g}}<extra></extra>",
            }
        )
    chart = layout("Update RMS per unit lr against gradient RMS (ε dashed)", ylog=True, xtitle="gradient RMS")
    chart["xaxis"]["type"] = "log"
    if eps is not None:
        chart["shapes"] = [vline(eps, dash="dash", color=SPIKE_COLOR)]
    return Figure(id="instability-update", data=data, layout=chart)


def _eps_line(eps: float | None) -> list[dict[str, Any]]:
    if eps is None:
        return []
    return [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": eps, "y1": eps, "line": {"dash": "dash", "color": SPIKE_COLOR}}]


def figures(source: Source, options: Options) -> View:
    spikes = source.series(["instability/spike"]).get("instability/spike")
    shapes = [vline(s, color=SPIKE_COLOR) for s in (spikes.steps if spikes is not None else [])]
    row = latest(source, "instability")
    eps = row.data.get("eps") if row is not None else None
    logz = {
        "instability/logz_mean_abs": "mean |log Z|",
        "instability/logz_max_abs": "max |log Z|",
        "instability/z_loss": "z-loss: mean log² Z",
    }
    out = [
        _loss(source, spikes, shapes),
        _chart(
            "instability-logits", "Largest attention logit |q·k|/√d per layer", True, _per_site(source, "attn_logit_max"), source, shapes
        ),
        _chart("instability-entropy", "Attention entropy per layer (nats)", False, _per_site(source, "attn_entropy"), source, shapes),
        _chart("instability-logz", "Output log-normalizer log Z", True, logz, source, shapes),
        _chart(
            "instability-grad",
            "Gradient RMS per parameter group (ε dashed)",
            True,
            _per_site(source, "grad_rms"),
            source,
            shapes + _eps_line(eps),
        ),
        _update_against_gradient(source, eps),
    ]
    if row is None:
        return View(figures=out)
    return View(figures=out, notes={"instability-info": _info(row.data, source.spec.get("probes", {}).get("instability") or {})})


def _info(d: dict[str, Any], cfg: dict[str, Any]) -> str:
    sources = {"step": "the step's own forward pass", "probe batch": "a fixed probe batch in eval mode"}
    read = []
    if d.get("attention_source"):
        read.append(f"attention logits of {len(d['attention'])} site(s) from {sources[d['attention_source']]}")
    if d.get("output_source"):
        read.append(f"log Z from {sources[d['output_source']]}")
    text = (
        f"Read (latest probe): {'; '.join(read) or 'no attention or outputs'}; gradients from the step's backward, updates from its "
        f"optimizer step (Δθ / lr). A head counts as near one-hot when its mean largest attention weight exceeds {d['onehot']:g}. "
    )
    if d.get("eps") is not None:
        text += f"ε = {d['eps']:g}: a group whose gradient RMS falls near it gets a smaller update. "
    window, factor = cfg.get("spike_window", 50), cfg.get("spike_factor", 1.5)
    text += f"A spike begins where the training loss exceeds {factor:g}× the median of the previous {window} steps."
    if d.get("skipped"):
        text += " Not measured: " + "; ".join(d["skipped"]) + "."
    return text
