"""Looking at backdoor attacks: the triggers of every attack, what they change, and the metrics.

Used by the attacks chapter of the book (``book/attacks.ipynb``):

* :func:`attack_names`, :func:`budget_params`, :func:`prepare_attacks`: build every attack for a
  dataset, fitting learned triggers (through :func:`ngfkit.pipeline.fit_trigger` and its cache)
  at their defaults (``"full"``) or with the cheaper settings of :attr:`Attack.short_fit` (``"short"``);
* :func:`with_strength`: an attack at a value of its "strength" knob (:attr:`Attack.strength`),
  mapped onto the attack's own parameters;
* :func:`perturbation_stats`, :func:`explorer_view`: the pure computation behind the explorer
  (triggered images, residuals, L∞ / L2 / PSNR, number of poisoned training images);
* :func:`attack_explorer`: the ipywidgets explorer, its panels precomputed with
  :func:`explorer_view` and switched in the browser (it trains nothing: it only applies
  already fitted triggers);
* :func:`metric_counts`, :func:`example_rows`: ACC / ASR / RA counted on a handful of images.

Shapes: images ``(N, C, H, W)`` float in ``[0, 1]``; labels ``(N,)`` int64.
"""
from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..attacks import ATTACKS, Attack, listing_order
from ..errors import NgfkitError
from ..metrics import accuracy, attack_success_rate, robust_accuracy
from .tables import markdown_table  # noqa: F401  (the one table helper; kept importable from here)

TRIGGER_BUDGETS = ("short", "full")


def attack_names(attacks: str | Sequence[str] = "all") -> list[str]:
    """``"all"`` (every registered attack, by family: :func:`~ngfkit.attacks.listing_order`), a
    comma-separated string or a list of names; unknown names raise :class:`NgfkitError` listing the
    registered ones."""
    return ATTACKS.parse_names(attacks, default=listing_order(ATTACKS.names()))


def budget_params(name: str, trigger_budget: str = "full") -> dict[str, Any]:
    """The attack parameters that fit ``name``'s trigger at ``trigger_budget``.

    ``"full"``: ``{}`` (the attack's defaults, so the trigger cache of the benchmark's models is
    used). ``"short"``: the attack's :attr:`~ngfkit.attacks.Attack.short_fit` for a learned attack
    (``{}`` for fixed triggers, and for learned attacks without one, such as CBA).
    """
    cls = ATTACKS.get(name)
    if trigger_budget not in TRIGGER_BUDGETS:
        raise NgfkitError(f"trigger_budget must be one of {', '.join(TRIGGER_BUDGETS)}, got {trigger_budget!r}")
    if trigger_budget == "full" or not cls.learned:
        return {}
    return dict(cls.short_fit)


def prepare_attacks(dataset: str = "fashion-mnist", attacks: str | Sequence[str] = "all", *, seed: int = 0,
                    trigger_budget: str = "full", epochs: int = 1, splits=None, device: torch.device | str = "cpu",
                    progress: bool = False) -> tuple[dict[str, Attack], list[dict[str, Any]]]:
    """Build the attacks of ``dataset``; fit the learned ones at ``trigger_budget`` (:func:`budget_params`).

    Learned triggers go through :func:`ngfkit.pipeline.fit_trigger` (so they are cached under
    their experiment's key, which includes the overrides) with the clean reference
    model of ``epochs`` training epochs (cached by :func:`~ngfkit.pipeline.load_or_train`).

    Returns ``({name: attack}, rows)``; one row per attack: ``attack``, ``learned``, ``params``
    (the overrides used, empty for defaults), ``fit_seconds`` (as recorded when the trigger was
    fitted, also when it now came from the cache; 0 for fixed triggers) and ``seconds`` (wall
    time of this call for the attack).
    """
    from ..pipeline import Experiment, fit_trigger, load_splits
    from ..train import TrainConfig

    built: dict[str, Attack] = {}
    rows: list[dict[str, Any]] = []
    for name in attack_names(attacks):
        start = time.perf_counter()
        params = budget_params(name, trigger_budget)
        exp = Experiment(dataset=dataset, attack=name, attack_params=params, seed=seed,
                         train=TrainConfig(epochs=epochs))
        attack = exp.make_attack()
        fit_seconds = 0.0
        if attack.learned:
            splits = splits or load_splits(exp)
            fit_seconds = fit_trigger(exp, attack, splits, device=device, progress=progress)
        built[name] = attack
        rows.append({"attack": name, "learned": attack.learned, "params": params, "fit_seconds": fit_seconds,
                     "seconds": time.perf_counter() - start})
    return built, rows


def fit_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of the learned attacks among :func:`prepare_attacks`'s ``rows``: the
    settings their trigger was fitted with (overrides next to the defaults) and the seconds."""
    lines = ["| attack | fitted with | fit (s) |", "| --- | --- | --- |"]
    for row in rows:
        if not row["learned"]:
            continue
        defaults = ATTACKS.get(row["attack"]).defaults
        used = ", ".join(f"{k} {v} (default {defaults[k]})" for k, v in row["params"].items()) or "its defaults"
        lines.append(f"| {row['attack']} | {used} | {row['fit_seconds']:.1f} |")
    return "\n".join(lines)


# -- the strength knob ------------------------------------------------------------------------


def with_strength(attack: Attack, strength: float | None = None, *, poison_rate: float | None = None
                  ) -> Attack | None:
    """A copy of ``attack`` with its knob at ``strength`` (``None``: as built) and another
    ``poison_rate``; learned trigger tensors are kept. ``None`` where ``strength`` is 0 and that
    means no trigger (:attr:`ngfkit.attacks.Strength.zero_is_clean`)."""
    knob = attack.strength
    params = dict(attack.params)
    if strength is not None:
        if knob.param is None:
            raise NgfkitError(f"attack {attack.name!r} has no strength knob: {knob.meaning}")
        if not knob.low <= float(strength) <= knob.high:
            raise NgfkitError(f"{attack.name} strength ({knob.param}) must be in [{knob.low:g}, {knob.high:g}], "
                              f"got {strength}")
        if float(strength) == 0.0 and knob.zero_is_clean:
            return None
        params.update(knob.params(strength))
    state = {**attack.state(), "params": params,
             "poison_rate": attack.poison_rate if poison_rate is None else float(poison_rate)}
    return Attack.from_state(state, attack.trigger if attack.learned else None)


# -- the explorer's pure computation -------------------------------------------------------------


def perturbation_stats(clean: Tensor, triggered: Tensor) -> dict[str, float]:
    """How far ``triggered`` is from ``clean`` (both ``(N, C, H, W)`` in ``[0, 1]``).

    ``linf``: the largest absolute change of any pixel value; ``l2``: the mean over images of the
    L2 norm of the change (over all ``C * H * W`` values, in pixel-value units); ``psnr``: peak
    signal-to-noise ratio in dB, ``10 log10(1 / MSE)`` with the mean squared change over all
    values (``inf`` when nothing changed); ``changed``: percentage of pixel values changed by
    more than half a grey level (0.5 / 255).
    """
    if clean.shape != triggered.shape or clean.dim() != 4:
        raise NgfkitError(f"perturbation_stats needs two (N, C, H, W) batches of one shape, got "
                          f"{tuple(clean.shape)} and {tuple(triggered.shape)}")
    delta = (triggered.double() - clean.double()).flatten(1)
    mse = float(delta.pow(2).mean())
    return {"linf": float(delta.abs().max()) if delta.numel() else 0.0,
            "l2": float(delta.norm(dim=1).mean()),
            "psnr": math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse),
            "changed": 100.0 * float((delta.abs() > 0.5 / 255).double().mean())}


def amplified_residual(clean: Tensor, triggered: Tensor) -> tuple[Tensor, float]:
    """The signed change ``triggered - clean`` (two batches of one shape, e.g. ``(K, C, H, W)``)
    mapped to ``[0, 1]`` around mid-grey, stretched so the largest change spans the range; returns
    it (same shape) and the stretch factor (how many times the residual was amplified)."""
    residual = triggered - clean
    peak = float(residual.abs().max())
    gain = 0.5 / peak if peak > 0 else 1.0
    return (0.5 + gain * residual).clamp(0, 1), gain


def explorer_view(attacks: Mapping[str, Attack], name: str, images: Tensor, labels: Tensor, *,
                  strength: float | None = None, poison_rate: float | None = None,
                  train_labels: Tensor | None = None, show: int = 3) -> dict[str, Any]:
    """What the explorer shows for attack ``name`` at ``strength`` and ``poison_rate``.

    Args:
        attacks: built (learned ones fitted) attacks by name, e.g. from :func:`prepare_attacks`.
        images, labels: ``(N, C, H, W)`` test images in ``[0, 1]`` and their ``(N,)`` classes;
            the images the attack targets (:meth:`Attack.attacked_mask`) are used.
        strength: the knob's value (:attr:`Attack.strength`); ``None``: the attack as built.
        poison_rate: share of the training set poisoned; ``None``: the attack's own.
        train_labels: ``(M,)`` classes of the training set, to count the poisoned images.
        show: how many images to return for display.
    Returns:
        a dict: ``attack``, ``param``, ``meaning``, ``value`` (the knob's value, ``None`` without
        a knob), ``off`` (strength 0 switched the trigger off), ``indices`` ``(K,)`` (rows of
        ``images`` shown), ``labels`` and ``targets`` ``(K,)``, ``clean``, ``triggered`` and
        ``residual`` ``(K, C, H, W)`` (the residual amplified around mid-grey by ``gain``, one
        factor for all K), the statistics of :func:`perturbation_stats` over all ``images`` the
        attack targets (``images`` says how many), ``poison_rate``, and with ``train_labels``:
        ``train_size``, ``poisoned`` (``round(poison_rate * M)``), ``relabelled`` (0 for
        clean-label attacks) and ``cover`` (images transformed with their labels kept).
    Raises:
        NgfkitError: unknown or unfitted attack, a strength out of range or for an attack without
        a knob, a poison rate the attack cannot use, or no image the attack targets.
    """
    if name not in attacks:
        if name in ATTACKS:
            raise NgfkitError(f"attack {name!r} is registered but not among the explorer's attacks "
                              f"({', '.join(attacks)}); build it (and fit a learned trigger) with prepare_attacks")
        raise NgfkitError(f"unknown attack {name!r}; the explorer has: {', '.join(attacks)}")
    if images.dim() != 4 or labels.shape != (len(images),):
        raise NgfkitError(f"explorer_view needs images (N, C, H, W) and N labels, got {tuple(images.shape)} "
                          f"and {tuple(labels.shape)}")
    base = attacks[name]
    knob = base.strength
    variant = with_strength(base, strength, poison_rate=poison_rate)
    counter = variant or with_strength(base, None, poison_rate=poison_rate)
    rows = torch.nonzero(base.attacked_mask(labels), as_tuple=False).flatten()
    if len(rows) == 0:
        raise NgfkitError(f"none of the {len(labels)} images is of a class that attack {name!r} targets; "
                          f"pass more images")
    clean = images[rows].float()
    triggered = variant.apply(clean) if variant is not None else clean.clone()
    shown = slice(0, max(1, int(show)))
    residual, gain = amplified_residual(clean[shown], triggered[shown])
    view = {"attack": name, "param": knob.param, "meaning": knob.meaning,
            "value": knob.current(counter) if strength is None else float(strength), "off": variant is None,
            "indices": rows[shown], "labels": labels[rows][shown], "targets": base.target_labels(labels[rows][shown]),
            "clean": clean[shown], "triggered": triggered[shown], "residual": residual, "gain": gain,
            "images": len(rows), **perturbation_stats(clean, triggered), "poison_rate": counter.poison_rate}
    if train_labels is not None:
        view.update(poison_counts(counter, train_labels))
    return view


def poison_counts(attack: Attack, train_labels: Tensor) -> dict[str, int]:
    """How ``attack`` (at its poison rate) poisons a training set with classes ``train_labels``
    ``(M,)``: ``train_size``, ``poisoned`` (``round(poison_rate * M)``), ``relabelled`` (0 for
    clean-label attacks) and ``cover`` (images transformed with their labels kept)."""
    train_labels = torch.as_tensor(train_labels, dtype=torch.long)
    poisoned = attack.poison_indices(train_labels)
    return {"train_size": len(train_labels), "poisoned": len(poisoned),
            "relabelled": 0 if attack.clean_label else len(poisoned),
            "cover": len(attack.cover_indices(len(train_labels), poisoned))}


def view_summary(view: dict[str, Any]) -> str:
    """One line of the view's numbers, e.g. for a figure title or the widget."""
    knob = "no strength knob" if view["param"] is None else f"{view['param']} = {view['value']:.3g}"
    if view["off"]:
        knob += " (trigger off)"
    psnr = "∞" if math.isinf(view["psnr"]) else f"{view['psnr']:.1f} dB"
    line = (f"{view['attack']}, {knob}: L∞ {view['linf']:.3f}, mean L2 {view['l2']:.2f}, PSNR {psnr}, "
            f"{view['changed']:.1f} % of pixel values changed (over {view['images']} images)")
    if "poisoned" in view:
        line += "; " + counts_summary(view)
    return line


def counts_summary(counts: Mapping[str, Any]) -> str:
    """``poison rate r: P of M training images poisoned, R relabelled[, C cover images]``."""
    line = (f"poison rate {counts['poison_rate']:g}: {counts['poisoned']} of {counts['train_size']} training "
            f"images poisoned, {counts['relabelled']} relabelled")
    if counts["cover"]:
        line += f", {counts['cover']} cover images (label kept)"
    return line


def view_png(view: dict[str, Any], scale: int = 1, gap: int = 2) -> bytes:
    """The view as one PNG (greyscale for one-channel images): a row per shown image, columns
    clean | triggered | residual (separated by ``gap`` white pixels), each pixel drawn as a
    ``scale`` x ``scale`` block."""
    from PIL import Image

    rows = []
    for clean, triggered, residual in zip(view["clean"], view["triggered"], view["residual"]):
        spacer = torch.ones(clean.shape[0], clean.shape[1], gap)
        tiles = [t.detach().cpu().float().clamp(0, 1) for t in (clean, triggered, residual)]
        rows.append(torch.cat([tiles[0], spacer, tiles[1], spacer, tiles[2]], dim=2))
    spacer = torch.ones(rows[0].shape[0], gap, rows[0].shape[2])
    grid = torch.cat([t for row in rows for t in (row, spacer)][:-1], dim=1)
    array = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    picture = Image.fromarray(array[:, :, 0], mode="L") if array.shape[2] == 1 else Image.fromarray(array)
    if scale != 1:
        picture = picture.resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def view_html(view: dict[str, Any], zoom: int = 4) -> str:
    """The view as HTML: its picture (:func:`view_png`, a data URI drawn ``zoom`` times larger
    with sharp pixels), a column legend and :func:`view_summary`."""
    import base64
    import html

    from PIL import Image

    png = view_png(view)
    width = Image.open(io.BytesIO(png)).width * zoom
    source = "data:image/png;base64," + base64.b64encode(png).decode()
    return (f'<img src="{source}" style="width:{width}px;image-rendering:pixelated" '
            f'alt="{html.escape(view["attack"])}: clean, triggered, residual"><br>'
            f"<small>columns: clean | triggered | residual (triggered − clean) × {view['gain']:.1f} around "
            f"mid-grey</small><br>{html.escape(view_summary(view))}")


def stats_table(views: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of :func:`explorer_view` results by attack: the strength knob at its
    default and the statistics of :func:`perturbation_stats`."""
    lines = ["| attack | strength knob | L∞ | mean L2 | PSNR (dB) | values changed (%) | images |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in views.items():
        knob = "—" if v["param"] is None else f"{v['param']} = {v['value']:.3g}"
        psnr = "∞" if math.isinf(v["psnr"]) else f"{v['psnr']:.1f}"
        lines.append(f"| {name} | {knob} | {v['linf']:.3f} | {v['l2']:.2f} | {psnr} | {v['changed']:.1f} | "
                     f"{v['images']} |")
    return "\n".join(lines)


def strength_table(names: Sequence[str]) -> str:
    """Markdown table of the explorer's strength knob of each attack in ``names``."""
    lines = ["| attack | strength knob | what it sets |", "| --- | --- | --- |"]
    for name in names:
        knob = ATTACKS.get(name).strength
        lines.append(f"| {name} | {'—' if knob.param is None else '`' + knob.param + '`'} | {knob.meaning} |")
    return "\n".join(lines)


#: the poison rates the explorer offers
RATES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def knob_values(attack: Attack) -> list[float]:
    """The strength values the explorer offers for ``attack``: its knob's grid from ``low`` to
    ``high`` by ``step``, plus the attack's own value; empty without a knob."""
    knob = attack.strength
    if knob.param is None:
        return []
    count = int(round((knob.high - knob.low) / knob.step))
    grid = {round(knob.low + i * knob.step, 6) for i in range(count + 1)}
    grid.add(round(knob.current(attack), 6))
    return sorted(v for v in grid if knob.low <= v <= knob.high)


def stack_widget(children: Sequence, selected_index: int):
    """``ipywidgets.Stack`` (ipywidgets 8), or on ipywidgets 7 (Colab's 7.7) a VBox of the same
    children, each in its own box, all but ``selected_index`` hidden; that fallback follows
    ``selected_index`` in the kernel only (7.x has no Stack to link in the browser)."""
    import ipywidgets as widgets
    import traitlets

    if hasattr(widgets, "Stack"):
        return widgets.Stack(list(children), selected_index=selected_index)

    class KernelStack(widgets.VBox):
        selected_index = traitlets.Int(0)

        @traitlets.observe("selected_index")
        def _show(self, change):
            for i, box in enumerate(self.children):
                box.layout.display = None if i == change["new"] else "none"

    # one box per child: the panels share one Layout, which must not be hidden for all of them
    boxed = [widgets.Box([child], layout=widgets.Layout()) for child in children]
    stack = KernelStack(boxed)
    stack.selected_index = selected_index
    stack._show({"new": selected_index})
    return stack


def attack_explorer(attacks: Mapping[str, Attack], images: Tensor, labels: Tensor, *,
                    train_labels: Tensor | None = None, initial: str | None = None, show: int = 3,
                    rates: Sequence[float] = RATES):
    """An ipywidgets explorer: an attack menu and, per attack, a strength slider (:attr:`Attack.strength`)
    over :func:`knob_values` and a poison-rate slider over ``rates``.

    Every panel is computed here, once, with :func:`explorer_view` (and :func:`poison_counts`):
    the images and statistics of each strength value, the training-set counts of each rate. The
    controls only choose which panel is visible, linked in the browser (``jslink``), so the
    explorer also works in a static page with embedded widget state, without a kernel. Nothing
    is trained or fitted.

    Returns an ``ipywidgets.VBox`` with ``.menu`` (the attack ``Dropdown``) and ``.panels``
    (``{name: {"strength": slider or None, "views": Stack, "rate": slider, "counts": Stack}}``).
    """
    import html

    import ipywidgets as widgets

    if not attacks:
        raise NgfkitError("attack_explorer needs at least one attack")
    initial = initial or next(iter(attacks))
    if initial not in attacks:
        explorer_view(attacks, initial, images, labels)  # raises the explanatory error
    rates = sorted({float(r) for r in rates})

    def link(control, stack):
        if isinstance(stack, getattr(widgets, "Stack", ())):
            widgets.jslink((control, "index"), (stack, "selected_index"))  # in the browser, kernel or not

        def follow(change):  # keeps the kernel's copy in step when a kernel is attached
            stack.selected_index = change["new"]

        control.observe(follow, names="index")

    def error_html(error: Exception) -> str:
        return f"<b>not possible:</b> {html.escape(str(error))}"

    # one layout and one style for every HTML panel, and one panel per distinct text: the
    # embedded widget state stays small (each would otherwise be a model of its own)
    html_layout, panels_by_text = widgets.Layout(), {}
    try:  # ipywidgets 8; 7.x gives each HTML its own default style
        from ipywidgets.widgets.widget_string import HTMLStyle
        style = {"style": HTMLStyle()}
    except ImportError:
        style = {}

    def panel(text: str):
        if text not in panels_by_text:
            panels_by_text[text] = widgets.HTML(text, layout=html_layout, **style)
        return panels_by_text[text]

    panels, boxes = {}, []
    for name, attack in attacks.items():
        knob = attack.strength
        values = knob_values(attack)
        if values:
            views = [explorer_view(attacks, name, images, labels, strength=v, show=show) for v in values]
            start = values.index(round(knob.current(attack), 6))
            labels_ = [f"{v:.3g}" for v in values]
            strength = widgets.SelectionSlider(options=labels_, index=start, description=knob.param,
                                               continuous_update=True, layout=widgets.Layout(width="420px"))
            view_stack = stack_widget([panel(view_html(v)) for v in views], selected_index=start)
            link(strength, view_stack)
            head = widgets.VBox([strength, panel(f"<small>{html.escape(knob.meaning)}</small>")])
        else:
            strength = None
            view_stack = stack_widget([panel(view_html(explorer_view(attacks, name, images, labels, show=show)))],
                                      selected_index=0)
            head = panel(f"<i>no strength knob: {html.escape(knob.meaning)}</i>")
        count_panels = []
        for r in rates:
            try:
                counted = with_strength(attack, None, poison_rate=r)
                text = html.escape(counts_summary({"poison_rate": r, **poison_counts(counted, train_labels)})) \
                    if train_labels is not None else "pass train_labels to count poisoned training images"
            except NgfkitError as error:
                text = error_html(error)
            count_panels.append(panel(text))
        rate_index = min(range(len(rates)), key=lambda i: abs(rates[i] - attack.poison_rate))
        rate = widgets.SelectionSlider(options=[f"{r:g}" for r in rates], index=rate_index, description="poison rate",
                                       continuous_update=True, layout=widgets.Layout(width="420px"))
        count_stack = stack_widget(count_panels, selected_index=rate_index)
        link(rate, count_stack)
        panels[name] = {"strength": strength, "views": view_stack, "rate": rate, "counts": count_stack}
        boxes.append(widgets.VBox([head, view_stack, rate, count_stack]))
    names = list(attacks)
    menu = widgets.Dropdown(options=names, index=names.index(initial), description="attack")
    attack_stack = stack_widget(boxes, selected_index=names.index(initial))
    link(menu, attack_stack)
    box = widgets.VBox([menu, attack_stack])
    box.menu, box.panels = menu, panels
    return box


# -- ACC, ASR and RA counted ----------------------------------------------------------------------


def first_of_each_class(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Index ``(K,)`` of the first image of each class present in ``labels`` ``(N,)``, by class."""
    labels = torch.as_tensor(labels)
    classes = range(int(labels.max()) + 1 if num_classes is None else num_classes)
    return torch.tensor([int(torch.nonzero(labels == c)[0]) for c in classes if bool((labels == c).any())],
                        dtype=torch.long)


def metric_counts(predictions: Mapping[str, Tensor]) -> dict[str, float]:
    """The counts behind ACC, ASR and RA, from :func:`ngfkit.metrics.predict` with an attack
    (``labels``, ``clean``, ``triggered``, ``target``, each ``(N,)``).

    ``n`` images, ``clean_correct`` of them right without the trigger; ``attacked`` of them have a
    target label different from their own (the others do not count for ASR and RA); of those,
    ``to_target`` go to the target with the trigger, ``to_true`` keep their true class and
    ``to_other`` go elsewhere. ``acc``, ``asr`` and ``ra`` are :mod:`ngfkit.metrics`' percentages,
    ``clean_correct / n``, ``to_target / attacked`` and ``to_true / attacked``.
    """
    labels, clean = predictions["labels"], predictions["clean"]
    triggered, target = predictions["triggered"], predictions["target"]
    attacked = labels != target
    counts = {"n": len(labels), "clean_correct": int((clean == labels).sum()), "attacked": int(attacked.sum()),
              "to_target": int((triggered[attacked] == target[attacked]).sum()),
              "to_true": int((triggered[attacked] == labels[attacked]).sum())}
    counts["to_other"] = counts["attacked"] - counts["to_target"] - counts["to_true"]
    counts.update(acc=accuracy(clean, labels), asr=attack_success_rate(triggered, labels, target),
                  ra=robust_accuracy(triggered, labels, target))
    return counts


def example_rows(predictions: Mapping[str, Tensor], names: Sequence[str] | None = None) -> list[dict[str, str]]:
    """One row per image of :func:`ngfkit.metrics.predict`'s output: its class, the prediction
    without and with the trigger, the attacker's target, and what the image counts towards."""
    def name(c) -> str:
        return names[int(c)] if names else str(int(c))

    rows = []
    for y, clean, triggered, target in zip(predictions["labels"], predictions["clean"], predictions["triggered"],
                                           predictions["target"]):
        if y == target:
            counts = "neither (the attack does not target its class)"
        elif triggered == target:
            counts = "ASR (backdoor fired)"
        elif triggered == y:
            counts = "RA (trigger ignored)"
        else:
            counts = "neither (another class)"
        rows.append({"true class": name(y), "clean prediction": name(clean) + (" ✓" if clean == y else " ✗"),
                     "triggered prediction": name(triggered), "attacker's target": name(target),
                     "counts towards": counts})
    return rows
