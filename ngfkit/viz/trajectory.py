"""Drawing the fine-tuning trajectories of :mod:`ngfkit.studies.trajectory` (ASR and clean
accuracy against the step)."""
from __future__ import annotations

from collections.abc import Sequence


def trajectory_figure(trajectories: Sequence[dict], names: Sequence[str] | None = None, *, title: str | None = None):
    """Two panels, attack success rate and clean accuracy against the fine-tuning step, one line
    per trajectory."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(names) if names is not None else [t["method"] for t in trajectories]
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                           subplot_titles=("attack success rate (backdoor)", "clean accuracy"))
    for i, (trajectory, name) in enumerate(zip(trajectories, names)):
        colour = f"hsl({(i * 137 + 210) % 360}, 65%, 45%)"
        mode = "lines+markers" if len(trajectory["steps"]) <= 40 else "lines"
        for col, key, label in ((1, "asr", "ASR"), (2, "acc", "ACC")):
            figure.add_trace(go.Scatter(
                x=trajectory["steps"], y=trajectory[key], mode=mode, name=name, legendgroup=name,
                showlegend=col == 1, line={"color": colour},
                hovertemplate=f"{name}<br>step %{{x}}<br>{label} %{{y:.1f}} %<extra></extra>"), row=1, col=col)
    figure.update_xaxes(title_text="fine-tuning step")
    figure.update_yaxes(title_text="attack success rate (%)", range=[-2, 102], row=1, col=1)
    figure.update_yaxes(title_text="clean accuracy (%)", row=1, col=2)
    figure.update_layout(template="plotly_white", height=430, title=title,
                         legend={"orientation": "h", "y": -0.22})
    return figure
