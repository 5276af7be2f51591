"""The sweep's results table: ROOT/results.md, ROOT/results.csv and ROOT/results.png.

One row per run: its state (a failed run says why), its sweep values, the last logged
step's loss terms and throughput and the last online-probe scores (from the run's
metrics.jsonl), and the top-1 of the sweep's evaluation step (`eval/<probe>_<label>`).
"""

from __future__ import annotations

import csv
import math

from twlv_jax import paths as pathlib
from twlv_jax.sweep.evaluate import scores
from twlv_jax.sweep.execute import last_records, run_dir, state_of
from twlv_jax.sweep.expand import Run
from twlv_jax.sweep.hyper import format_value, short_keys

METRICS = ("step", "loss", "clips_per_s")


def rows(root: str, runs: list[Run]) -> list[dict]:
    """One dict per run, keys in table order."""
    short = short_keys({k for run in runs for k in run.values})
    table = []
    for run in runs:
        folder = run_dir(root, run)
        state, detail = state_of(folder, run.config)
        train, probe = last_records(folder)
        row = {"run": run.name, "state": state}
        row.update({short[k]: format_value(v) for k, v in run.values.items()})
        row.update({k: train[k] for k in METRICS if k in train})
        row.update({k: v for k, v in train.items() if k.startswith("loss/")})
        row.update({k: v for k, v in probe.items() if k.startswith("probe/")})
        row.update(scores(folder, run.evaluation))
        row["note"] = detail
        table.append(row)
    return table


def _columns(table: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(k for row in table for k in row if k != "note"))
    return [*columns, "note"]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value).replace("|", "/")


def write_csv(path: str, table: list[dict]) -> None:
    with pathlib.atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(table))
        writer.writeheader()
        writer.writerows(table)


def write_markdown(path: str, table: list[dict], title: str) -> None:
    columns = _columns(table)
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in table]
    with pathlib.atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def score_keys(table: list[dict]) -> list[str]:
    """The top-1 columns: the online k-NN probe's and the evaluation step's."""
    return sorted({k for row in table for k in row if k.startswith(("probe/knn_", "eval/"))})


def write_plot(path: str, table: list[dict], title: str) -> bool:
    """A bar chart of each run's top-1 scores; False (nothing written) without any."""
    keys = score_keys(table)
    if not keys:
        return False
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [row["run"] + ("" if row["state"] == "done" else f" ({row['state']})") for row in table]
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4.5))
    for i, key in enumerate(keys):
        values = [row.get(key, math.nan) for row in table]
        positions = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(names))]
        ax.bar(positions, [s if isinstance(s, float) else math.nan for s in values], width,
               label=key.replace("probe/", "online ").replace("eval/", ""))
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("val top-1")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with pathlib.atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return True


def collect(root: str, runs: list[Run], title: str) -> tuple[list[dict], list[str]]:
    """Writes the table files; returns (rows, paths written)."""
    table = rows(root, runs)
    paths = [pathlib.join(root, name) for name in ("results.md", "results.csv", "results.png")]
    write_markdown(paths[0], table, title)
    write_csv(paths[1], table)
    if not write_plot(paths[2], table, title):
        paths.pop()
    return table, paths
