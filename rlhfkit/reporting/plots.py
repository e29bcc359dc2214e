"""Training curves from metrics.jsonl rows, one PNG per group of related metrics.

matplotlib is imported inside the functions and drawn through its Agg canvas directly (no
pyplot), so plotting never changes the backend of a notebook or a GUI the caller is using.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.reporting.logger import series
from rlhfkit.reporting.metrics import INFO_EVENTS


@dataclass(frozen=True)
class PlotGroup:
    """Metrics drawn in one figure.

    key: file stem of the PNG. left / right: metric names on the left / right y-axis (the right
    axis is for a quantity on another scale, e.g. the KL coefficient next to the KL). band:
    optional {mean_name: std_name} drawn as a shaded +-1 std band. explain: the sentence the
    report prints under the figure.
    """

    key: str
    title: str
    left: tuple[str, ...]
    ylabel: str
    explain: str
    right: tuple[str, ...] = ()
    ylabel_right: str = ""
    band: tuple[tuple[str, str], ...] = ()


PLOT_GROUPS: tuple[PlotGroup, ...] = (
    # -- RL -----------------------------------------------------------------------------------
    PlotGroup("score", "Reward: score and gold reward", ("reward/score_mean",), "score",
              "The score is what RL maximizes (reward model or reward function); the shaded band is "
              "+-1 standard deviation over the batch. The gold reward (right axis, bundled tasks only) "
              "is the task's true preference, never shown to training. Both should rise together; a "
              "score that keeps rising while gold stalls or falls means the policy is exploiting the "
              "reward model (reward hacking).",
              right=("reward/gold_mean",), ylabel_right="gold",
              band=(("reward/score_mean", "reward/score_std"),)),
    PlotGroup("kl", "KL to the reference model", ("kl/mean",), "KL (nats per response)",
              "KL to the reference should stay bounded: it measures how far the policy has moved from "
              "the SFT model. A steady climb means the policy is drifting, usually toward text the "
              "reward model over-rates. The KL coefficient (right axis) is the price paid per nat; the "
              "adaptive controller raises it when KL is above its target.",
              right=("kl/coef", "policy/penalty_coef"), ylabel_right="KL coefficient"),
    PlotGroup("entropy", "Policy entropy", ("policy/entropy",), "nats per token",
              "How spread out the policy's next-token choices are. It falls slowly as the policy grows "
              "confident; a fast drop toward 0 (entropy collapse) means the policy has stopped "
              "exploring and tends to repeat one answer."),
    PlotGroup("clipfrac", "Clip fraction", ("policy/clipfrac", "value/clipfrac"), "fraction of tokens",
              "Share of tokens where PPO's clip took effect. Typically 0 to 0.2; much higher means each "
              "update moves the policy too far (lower the learning rate or the number of PPO epochs)."),
    PlotGroup("length", "Response length", ("response/length_mean", "response/length_max"), "tokens",
              "How long the responses are. A sudden change (every response at the maximum, or "
              "collapsing to a few tokens) often signals reward hacking or collapse. The EOS fraction "
              "(right axis) is the share of responses that ended on their own.",
              right=("response/eos_fraction",), ylabel_right="EOS fraction"),
    PlotGroup("length_spread", "Response length percentiles",
              ("response/length_p10", "response/length_p50", "response/length_p90"), "tokens",
              "The 10th, 50th and 90th percentiles of the response lengths: a mean hides a long tail. A p90 "
              "creeping toward the length limit while p50 stays means a few responses learned to ramble."),
    PlotGroup("repetition", "Repetition and diversity",
              ("response/repeat_3gram_fraction", "response/distinct_1", "response/distinct_2"), "fraction",
              "Share of responses that repeat a 3-gram (loops), and distinct-1/2: distinct tokens and "
              "bigrams over all of them. Repetition up and diversity down while the score rises is the "
              "usual face of reward hacking (MOSS-RLHF)."),
    PlotGroup("perplexity", "Perplexity of the samples", ("response/ppl_policy",), "policy perplexity",
              "Perplexity of the sampled responses under the policy (exp of their entropy; toward 1 "
              "means deterministic) and, right axis, under the reference: rising far above its start "
              "means the policy writes text the SFT model finds unlikely.",
              right=("response/ppl_ref",), ylabel_right="reference perplexity"),
    PlotGroup("value", "Critic", ("loss/value",), "value loss",
              "The critic predicts the return of each token. Its loss should fall during warmup and "
              "then stay level; explained variance (right axis) near 1 means it predicts well, at or "
              "below 0 means it is no better than a constant.",
              right=("value/explained_variance",), ylabel_right="explained variance"),
    PlotGroup("loss", "Policy loss terms", ("loss/policy", "loss/kl", "loss/entropy", "loss/sft"),
              "loss",
              "The terms of the policy loss, each before its coefficient. Their level is not a measure "
              "of progress (policy-gradient losses hover near 0 by design): look for spikes and drift."),
    PlotGroup("grad", "Gradient norm", ("grad/norm",), "L2 norm",
              "Global gradient norm before clipping. Spikes often come just before a run diverges."),
    PlotGroup("prime", "PRIME implicit reward model", ("prime/prm_loss",), "loss",
              "The implicit process reward model learns from outcome labels; its loss should fall and "
              "its accuracy (right axis) rise above 0.5.",
              right=("prime/prm_accuracy",), ylabel_right="accuracy"),
    PlotGroup("groups", "Dropped groups", ("groups/dropped_fraction",), "fraction of groups",
              "Prompt groups whose responses all got the same score carry no signal and are dropped. "
              "Near 1 means the task is too easy or too hard for the current policy."),
    PlotGroup("time", "Time per step", ("time/step_s", "time/generate_s", "time/train_s"), "seconds",
              "Where each step's time goes: making the experience (sampling, the models' forward "
              "passes, scoring) and the update."),
    # -- SFT and reward model -------------------------------------------------------------------
    PlotGroup("train_loss", "Training and held-out loss", ("train/loss", "eval/loss"), "loss (nats)",
              "Both should fall. Held-out loss turning upward while training loss keeps falling means "
              "the model is memorizing its training data (overfitting)."),
    PlotGroup("ppl", "Held-out perplexity", ("eval/ppl",), "perplexity",
              "exp(held-out loss): how many equally likely tokens the model hesitates between, on "
              "average. Lower is better."),
    PlotGroup("accuracy", "Preference accuracy", ("train/accuracy", "eval/accuracy"), "fraction of pairs",
              "How often the reward model scores the preferred response above the other. 0.5 is "
              "chance; noisy labels cap it (people agree on about 60-75% of pairs)."),
)


@dataclass(frozen=True)
class Plot:
    group: PlotGroup
    path: Path


def render_plots(rows: list[dict], out_dir, events: list[dict] | None = None, prefix: str = "",
                 groups: tuple[PlotGroup, ...] = PLOT_GROUPS) -> list[Plot]:
    """Draw every group with at least one logged metric -> [Plot(group, png_path)], in group order.

    rows / events: as returned by `read_metrics`. Health events are drawn as vertical lines at their
    step, one colour and legend entry per event name; informational ones (INFO_EVENTS, e.g.
    "start") are not drawn. Files are `out_dir/{prefix}{group.key}.png`.
    """
    events = [e for e in events or [] if e.get("event") not in INFO_EVENTS]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for group in groups:
        names = group.left + group.right
        if not any(series(rows, name)[0] for name in names):
            continue
        path = out_dir / f"{prefix}{group.key}.png"
        _draw(group, rows, events, path)
        plots.append(Plot(group, path))
    return plots


def plot_curves(rows: list[dict], out_dir, events: list[dict] | None = None, prefix: str = "") -> list[Path]:
    """PNG paths of the curves of `rows` (see `render_plots`); metrics not present are skipped."""
    return [plot.path for plot in render_plots(rows, out_dir, events=events, prefix=prefix)]


_LEFT_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf")
_RIGHT_COLORS = ("#d62728", "#ff7f0e")
_EVENT_COLORS = ("#7f7f7f", "#bcbd22", "#e377c2", "#8c564b")


def _draw(group: PlotGroup, rows: list[dict], events: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    right_present = [n for n in group.right if series(rows, n)[0]]
    n_entries = sum(1 for n in group.left if series(rows, n)[0]) + len(right_present)
    n_entries += len({str(e.get("event")) for e in events if isinstance(e.get("step"), (int, float))})
    legend_rows = -(-n_entries // 3)
    height = 3.2 + 0.2 * legend_rows  # the legend sits under the plot, where it hides no curve
    fig = Figure(figsize=(7.0, height), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    handles = _lines(ax, group.left, rows, _LEFT_COLORS, dict(group.band))
    ax.set_ylabel(group.ylabel)
    if right_present:
        ax2 = ax.twinx()
        handles += _lines(ax2, tuple(right_present), rows, _RIGHT_COLORS, {}, style="--")
        ax2.set_ylabel(group.ylabel_right, color=_RIGHT_COLORS[0])
        ax2.tick_params(axis="y", colors=_RIGHT_COLORS[0])
    handles += _event_lines(ax, events)
    ax.set_title(group.title)
    ax.set_xlabel("step")
    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # one logged step: widen so the integer ticks do not fall back to fractions
        ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    # Fixed margins instead of tight_layout, which draws the figure a second time.
    bottom = (0.55 + 0.2 * legend_rows) / height
    fig.subplots_adjust(left=0.13, right=0.87 if right_present else 0.97, bottom=bottom, top=1 - 0.35 / height)
    if handles:
        fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=min(3, len(handles)), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    fig.savefig(path, format="png")


def _lines(ax, names, rows, colors, band: dict, style: str = "-") -> list:
    handles = []
    for i, name in enumerate(names):
        steps, values = series(rows, name)
        if not steps:
            continue
        color = colors[i % len(colors)]
        if name in band:
            std = dict(zip(*series(rows, band[name])))
            pts = [(s, v, std[s]) for s, v in zip(steps, values) if s in std]
            if pts:
                ax.fill_between([p[0] for p in pts], [p[1] - p[2] for p in pts], [p[1] + p[2] for p in pts],
                                color=color, alpha=0.12, linewidth=0)
        if len(steps) > 40:
            # Noisy RL curves: raw values faint, an exponential moving average on top.
            ax.plot(steps, values, style, color=color, linewidth=0.8, alpha=0.3)
            (line,) = ax.plot(steps, _ema(values, 0.9), style, color=color, linewidth=1.6,
                              label=f"{name} (smoothed)")
        else:
            marker = "o" if len(steps) <= 25 else None  # sparse series (eval every N steps) need dots
            (line,) = ax.plot(steps, values, style, color=color, marker=marker, markersize=3, linewidth=1.5,
                              label=name)
        handles.append(line)
    return handles


def _ema(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing slider)."""
    out, avg = [], 0.0
    for i, value in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight ** i))
    return out


def _event_lines(ax, events: list[dict]) -> list:
    colors: dict[str, str] = {}
    handles = []
    for event in events:
        step = event.get("step")
        if not isinstance(step, (int, float)):
            continue
        name = str(event.get("event", "event"))
        first = name not in colors
        if first:
            colors[name] = _EVENT_COLORS[len(colors) % len(_EVENT_COLORS)]
        line = ax.axvline(step, color=colors[name], linestyle=":", linewidth=1.2,
                          label=f"event: {name}" if first else None)
        if first:
            handles.append(line)
    return handles
