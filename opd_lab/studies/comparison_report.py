"""A comparison's report folder as it is read and shown: listed, loaded, written as Markdown.

`opd_lab.studies.comparison` runs a comparison and computes its numbers; this module
holds what the folder's files look like (`report.json`, `report.md`, `curves.html`,
`stopped.json`), the compute-to-target table and the report's lines, and finds the
reports: the local ones under `<data dir>/reports/` and the measured ones shipped with
the package (`paths.MEASURED_RESULTS_DIR`). The app's Compare tab and notebook 3 read
reports through it.

Example:
    >>> data = load_report(list_reports()[0])  # doctest: +SKIP
    >>> target_rows(data)[0]["method"]  # doctest: +SKIP
    'RL'
"""

from __future__ import annotations

import json
from pathlib import Path

from opd_lab import report
from opd_lab.files import read_json, write_json_atomic
from opd_lab.paths import MEASURED_RESULTS_DIR, data_dir

REPORT_FILE = "report.json"
STOPPED_FILE = "stopped.json"  # a comparison stopped before its end: what finished (no verdict)
SWEEP_SEED = 1000  # the sweep's seed is never one of the reported seeds


def reports_dir() -> Path:
    path = data_dir() / "reports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stopped_markdown(data: dict) -> str:
    """The report of a stopped comparison as Markdown: one row per finished run."""
    lines = [f"# opd-lab compare: scenario `{data['settings_used']['scenario']}`, stopped ({data['stopped']})", "",
             f"{len(data['finished'])} runs finished, {len(data['unfinished'])} were stopped with a checkpoint "
             f"(resume them with `opd-lab resume RUN`), {data['never_started']} never started. No verdict: "
             "not every method ran its budget.", "",
             "| run | method | steps | accuracy at start | accuracy at end |", "|---|---|---|---|---|"]
    for row in data["finished"]:
        start, end = row["accuracy_start"], row["accuracy_end"]
        lines.append(f"| {row['run']} | {row['method']} | {row['steps']} | "
                     f"{'-' if start is None else f'{start:.1%}'} | {'-' if end is None else f'{end:.1%}'} |")
    if data["unfinished"]:
        lines += ["", "Stopped: " + ", ".join(f"`{name}`" for name in data["unfinished"])]
    return "\n".join(lines) + "\n"


def write_report(out: Path, data: dict) -> None:
    """report.json, report.md and curves.html in `out`."""
    from opd_lab.plots import seed_band_figure

    write_json_atomic(out / REPORT_FILE, data)
    (out / "report.md").write_text(report_markdown(data))
    seed_band_figure(out).write_html(out / "curves.html", include_plotlyjs="cdn")


def load_report(folder: str | Path) -> dict:
    """A report's data (report.json) from its folder."""
    data = read_json(Path(folder) / REPORT_FILE)
    if not data:
        raise FileNotFoundError(f"no {REPORT_FILE} in {folder}")
    return data


def list_reports() -> list[Path]:
    """Report folders under the data dir, newest first."""
    return sorted((p for p in reports_dir().iterdir() if (p / REPORT_FILE).exists()),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def _cost_text(cost: dict, name: str) -> str:
    if cost["median"] is None:
        return "not reached"
    value = cost["median"]
    text = f"{value:.0f}" if name in ("steps", "samples") else (f"{value:.2e}" if name == "flops" else f"{value:.1f}")
    if cost["min"] is not None and cost["max"] is not None and cost["min"] != cost["max"]:
        low, high = cost["min"], cost["max"]
        spread = (f"{low:.0f}-{high:.0f}" if name in ("steps", "samples")
                  else f"{low:.1e}-{high:.1e}" if name == "flops" else f"{low:.0f}-{high:.0f}")
        text += f" ({spread})"
    return text


def target_rows(data: dict) -> list[dict]:
    """The compute-to-target table: one row per arm and gap fraction, ratios against OPD."""
    summaries = data["summaries"]
    rows = []
    for arm in report.ordered_arms(summaries):
        summary = summaries[arm]
        for target in summary["targets"]:
            row = {"method": report.arm_label(arm), "gap closed": f"{target['fraction']:.0%}",
                   "target accuracy": f"{target['accuracy']:.1%}",
                   "seeds reached": f"{target['reached']}/{summary['seeds']}"}
            for name, title in (("steps", "steps"), ("samples", "samples"), ("flops", "FLOPs"), ("wall_s", "wall s")):
                row[title] = _cost_text(target[name], name)
            for name, title in (("steps", "steps vs OPD"), ("flops", "FLOPs vs OPD")):
                row[title] = ("1x" if arm == "opd" else
                              report.format_ratio(report.ratio(summaries, arm, "opd", target["fraction"], name))
                              if "opd" in summaries else "n/a")
            final = summary["final_accuracy"]
            row["final accuracy"] = f"{final['median']:.1%} ({final['min']:.1%}-{final['max']:.1%})"
            rows.append(row)
    return rows


def grid_edges(data: dict) -> dict[str, str]:
    """Arms whose chosen learning rate is the grid's lowest or highest value (none without a sweep)."""
    grid = data["settings"]["learning_rates"] if data.get("sweep") else []
    edges = {}
    for arm, rate in data["learning_rates"].items():
        if len(grid) > 1 and rate == min(grid):
            edges[arm] = f"{rate:g}, the lowest rate tried"
        elif len(grid) > 1 and rate == max(grid):
            edges[arm] = f"{rate:g}, the highest rate tried"
    return edges


def sampled_lines(data: dict) -> list[str]:
    """The report's lines on sampled accuracy (temperature 1): its verdict and each arm's final value."""
    sampled = data.get("sampled")
    if not sampled:
        return []
    finals = "; ".join(f"{report.arm_label(arm)} {s['final_accuracy']['median']:.1%} "
                       f"({s['final_accuracy']['min']:.1%}-{s['final_accuracy']['max']:.1%})"
                       for arm, s in ((a, sampled["summaries"][a]) for a in report.ordered_arms(sampled["summaries"])))
    return [f"**Verdict (sampled accuracy, temperature 1, mean of {sampled['samples_per_problem']} samples per "
            f"problem).** {sampled['verdict']['sentence']}", "",
            f"Sampled accuracy: teacher {sampled['teacher_accuracy']:.1%}, base student {sampled['base_accuracy']:.1%}; "
            f"final, median (range) over seeds: {finals}."
            + (f" The noisy teacher (q = {noisy['noise']:g}) the runs learned from: {noisy['sampled']:.1%} sampled, "
               f"{noisy['greedy']:.1%} greedy." if (noisy := sampled.get("noisy_teacher")) else ""), ""]


def report_markdown(data: dict) -> str:
    """The report as Markdown: the scenario, the sweep, the table and the verdict."""
    rows = target_rows(data)
    headers = list(rows[0]) if rows else []
    lines = [f"# opd-lab compare: scenario `{data['scenario']}`{' (quick)' if data['quick'] else ''}", "",
             f"**Verdict (greedy accuracy).** {data['verdict']['sentence']}", "",
             *sampled_lines(data),
             f"Condition: {data['condition']}", "",
             f"Teacher {data['teacher_accuracy']:.1%}, base student {data['base_accuracy']:.1%} "
             f"(greedy, {data['settings']['eval_count']} held-out problems). Budget {data['settings']['steps']} steps "
             f"of {data['settings']['batch_size']} sequences; prompt pool {data['settings']['prompt_pool'] or 'none'}; "
             f"{data['seeds']} seeds; " + (f"{data['seconds'] / 60:.1f} minutes in all." if data["seconds"] == data["seconds"]
                                            else "time not recorded."), "",
             "## Compute to close the gap from the base student to the teacher",
             "Medians over seeds (range over the seeds that reached the target); a median is "
             "\"not reached\" when most seeds did not reach it; \"more than\" ratios use the whole budget.", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(row[h]) for h in headers) + " |" for row in rows]
    if not data.get("sweep"):  # a pilot: rates taken from elsewhere, no grid of its own
        rates = ", ".join(f"{report.arm_label(arm)} {rate:g}" for arm, rate in data["learning_rates"].items())
        return "\n".join(lines + ["", "## Learning rates", f"No sweep of its own: {rates}."]) + "\n"
    lines += ["", "## Learning-rate sweep (the same grid and budget for every method)",
              f"{data['settings']['sweep_steps']} steps, seed {SWEEP_SEED}; score = mean held-out accuracy over "
              "the sweep's evaluations; equal scores go to the lower per-token KL to the teacher at the sweep's end.",
              "", "| method | learning rate | score | final KL | chosen |", "|---|---|---|---|---|"]
    lines += [f"| {report.arm_label(r['arm'])} | {r['learning_rate']:g} | {r['score']:.3f} | "
              f"{r.get('final_kl', float('nan')):.3f} | "
              f"{'yes' if data['learning_rates'][r['arm']] == r['learning_rate'] else ''} |" for r in data["sweep"]]
    edges = grid_edges(data)
    if edges:
        lines += ["", "At the edge of the grid (a wider grid might serve these methods better): "
                  + "; ".join(f"{report.arm_label(arm)} ({where})" for arm, where in edges.items()) + "."]
    return "\n".join(lines) + "\n"


def report_path(name: str) -> Path:
    """The folder of the report called `name` (a folder name under the reports dir), validated."""
    for folder in list_reports():
        if folder.name == name:
            return folder
    raise FileNotFoundError(f"no compare report named {name!r}")


MEASURED_PREFIX = "measured: "


def committed_reports() -> dict[str, Path]:
    """The full reports shipped with the package (`paths.MEASURED_RESULTS_DIR`), by name; they have no runs."""
    if not MEASURED_RESULTS_DIR.is_dir():
        return {}
    return {path.stem: path for path in sorted(MEASURED_RESULTS_DIR.glob("*.json"))
            if is_shown(json.loads(path.read_text()))}  # not two-experts (arms' curves)


def is_shown(data: dict) -> bool:
    """A report the Compare tab shows: a comparison's (a verdict over arms) or a hand-off's (an N*)."""
    return {"verdict", "summaries"} <= set(data) or "n_star" in data


def list_handoff_reports() -> list[Path]:
    """Hand-off report folders (`opd-lab compare --protocol handoff`) under the data dir, newest first."""
    return sorted((p for p in reports_dir().iterdir() if (p / "handoff.json").exists()),
                  key=lambda p: p.stat().st_mtime, reverse=True)


def measured_report(scenario: str) -> tuple[dict | None, str]:
    """The newest full (not quick) report of `scenario`: a local one, else the one shipped in `paths.MEASURED_RESULTS_DIR`.

    Returns `(data, where)`; `data` is None when there is neither (e.g. an installed
    wheel without the repository's docs and no local report yet).
    """
    for folder in list_reports():
        data = load_report(folder)
        if data.get("label", data["scenario"]) == scenario and not data["quick"]:
            return data, str(folder)
    committed = MEASURED_RESULTS_DIR / f"{scenario}.json"
    if committed.exists():
        return json.loads(committed.read_text()), str(committed)
    return None, ""
