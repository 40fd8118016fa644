"""The plots a tuning job writes: the learning curve and where the secure cost goes."""

from __future__ import annotations

from pathlib import Path

from ..mpc.comm import COST_CATEGORIES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curve(results: dict, path: Path) -> None:
    plt = _pyplot()
    gens = results["generations"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [g["generation"] + 1 for g in gens]
    ax.plot(x, [g["loss_min"] for g in gens], label="population best (train minibatch)", color="C0")
    ax.plot(x, [g["loss_mean"] for g in gens], label="population mean", color="C0", alpha=0.4)
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{results['job']['loss']} loss")
    dev = [(g["generation"] + 1, g["dev_accuracy"]) for g in gens if g["dev_accuracy"] is not None]
    if results["accuracy"].get("start_dev") is not None:
        dev.insert(0, (0, results["accuracy"]["start_dev"]))       # the starting prompt, z = 0
    ax2 = ax.twinx()
    if dev:
        ax2.plot(*zip(*dev), "o-", color="C1", label="dev accuracy (mean of the search)")
    # test accuracies with their 95% intervals (bands), and the paired test of the gain
    comparison = results["comparison"]
    for name, color, ls in (("zero_shot", "C2", "--"), ("tuned", "C3", ":")):
        value, (low, high) = comparison[name]["accuracy"], comparison[name]["interval"]
        ax2.axhline(value, color=color, ls=ls,
                    label=f"test, {name.replace('_', '-')} {value:.1%} [{low:.1%}, {high:.1%}]")
        ax2.axhspan(low, high, color=color, alpha=0.12)
    low, high = comparison["gain_interval"]
    ax2.plot([], [], " ", label=f"gain {100 * comparison['gain']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], "
                                 f"McNemar p = {comparison['mcnemar_p']:.2g}")
    ax2.set_ylabel("accuracy")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="best")
    job = results["job"]
    ax.set_title(f"{job['data'] or job['task']}: {job['mode']}, {results['attention']} attention, seed {job['seed']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_costs(results: dict, path: Path) -> None:
    """Online bytes per generation by category (median over generations)."""
    plt = _pyplot()
    gens = [g for g in results["generations"] if g["categories"]]
    med = {}
    for c in COST_CATEGORIES:
        values = sorted(g["categories"].get(c, 0) for g in gens)
        med[c] = values[len(values) // 2] / 2**20 if values else 0.0
    per = results["cost"]["per_generation"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(list(med), list(med.values()), color=[f"C{i}" for i in range(len(med))])
    ax.set_ylabel("online MB per generation (server link)")
    ax.set_title(f"per generation: {per['online_bytes'] / 2**30:.2f} GB, {per['rounds']:.0f} rounds, "
                 f"{per['wall_seconds']:.1f} s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
