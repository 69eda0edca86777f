"""Reports: ``report.json``, ``report.md`` and a self-contained ``report.html``.

The JSON follows ``SCHEMA`` (JSON Schema). The Markdown links its figures as PNG files
beside it; the HTML embeds them, so it opens anywhere without fetching anything. Every
number in the text is read from the results.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

from ..core.files import write_bytes

_RESULT = {
    "type": "object",
    "required": ["backbone", "method", "n_train", "test_accuracy", "balanced_accuracy", "macro_f1",
                 "fit_seconds"],
    "properties": {
        "dataset": {"type": "string"}, "backbone": {"type": "string"}, "method": {"type": "string"},
        "n_train": {"type": "integer", "minimum": 1},
        "test_accuracy": {"type": "number", "minimum": 0, "maximum": 1},
        "balanced_accuracy": {"type": "number", "minimum": 0, "maximum": 1},
        "macro_f1": {"type": "number", "minimum": 0, "maximum": 1},
        "fit_seconds": {"type": "number", "minimum": 0},
        "val_accuracy": {"type": ["number", "null"]}, "best": {"type": "boolean"},
        "selection": {"type": "string"},  # "5-fold cross-validation", "validation split" or "none"
        "cv": {"type": ["object", "null"]},  # folds, accuracy, accuracy_std, fold_accuracies
        "test_interval95": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "vs_best": {"type": "object", "required": ["p_value"]},  # McNemar's exact test against the best
    },
}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["name", "results", "extraction", "best", "efficiency", "environment"],
    "properties": {
        "name": {"type": "string"},
        "results": {"type": "array", "minItems": 1, "items": _RESULT},
        "extraction": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["backbone", "images", "images_per_second"],
            "properties": {"backbone": {"type": "string"}, "images": {"type": "integer", "minimum": 0},
                           "images_per_second": {"type": ["number", "null"], "minimum": 0}}}},
        "best": {"type": "object", "required": ["backbone", "method", "confusion_matrix", "per_class"]},
        "efficiency": {"type": "array", "items": {
            "type": "object", "required": ["backbone", "method", "points"],
            "properties": {"points": {"type": "array", "items": {
                "type": "object", "required": ["per_class", "mean", "std"]}}}}},
        "environment": {"type": "object", "required": ["featx", "torch", "device", "cores", "precision"]},
    },
}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def method_label(row: dict) -> str:
    """A result's method in words: the head's name, "finetune (lp_ft)" or "scratch"."""
    return f"{row['method']} ({row['strategy']})" if row.get("strategy") else row["method"]


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _frozen_seconds(report: dict, row: dict) -> float:
    """Embedding every image of the row's backbone plus fitting its head."""
    ex = next((e for e in report["extraction"] if e["backbone"] == row["backbone"]), None)
    embed = ex["images"] / ex["images_per_second"] if ex and ex.get("images_per_second") else 0.0
    return embed + row["fit_seconds"]


def _comparison(report: dict, backbone: str) -> str | None:
    """"frozen features + logreg: 94.1 % in 40 s; fine-tuning (lp_ft): ...; from scratch: ..."."""
    rows = [r for r in report["results"] if r["backbone"] == backbone]
    nets = [r for r in rows if r["method"] in ("finetune", "scratch")]
    heads = [r for r in rows if r not in nets]
    if not nets or not heads:
        return None
    head = max(heads, key=lambda r: r.get("val_accuracy") or -1.0)  # ties: the first listed
    frozen = _seconds(_frozen_seconds(report, head))
    parts = [f"frozen features + {head['method']}: {_pct(head['test_accuracy'])} in {frozen}"]
    ex = next((e for e in report["extraction"] if e["backbone"] == backbone), {})
    for r in nets:
        what = f"fine-tuning ({r['strategy']})" if r["method"] == "finetune" else "from scratch"
        if ex.get("image_size") not in (None, r["image_size"]):  # the features were taken at another size
            what += f" at {r['image_size']} px"
        parts.append(f"{what}: {_pct(r['test_accuracy'])} in {_seconds(r['fit_seconds'])} "
                     f"({r['epochs_run']} epochs, {r['train_images_per_second']:.1f} training images/s)")
    return f"{backbone}, " + "; ".join(parts) + "."


def summary(report: dict) -> list[str]:
    """Plain-words lines for the top of the report, every number read from the results."""
    rows = report["results"]
    best = next(r for r in rows if r.get("best"))
    lines = [line for b in dict.fromkeys(r["backbone"] for r in rows) if (line := _comparison(report, b))]
    chosen_by = "cross-validated" if best.get("cv") else "validation"
    lines += [(f"Best (by {chosen_by} accuracy): {best['backbone']} + {method_label(best)}, "
              f"{_pct(best['test_accuracy'])} test accuracy{_interval(best)}, fitted in "
              f"{best['fit_seconds']:.1f} s on {best['n_train']} labelled images.")]
    if (close := _within_noise(rows)):
        lines.append(close)
    recipes = {e["backbone"] for e in report["extraction"] if "recipe" in e}  # their own table says more
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        if backbone == best["backbone"] or backbone in recipes:
            continue
        top = max((r for r in rows if r["backbone"] == backbone), key=lambda r: r["test_accuracy"])
        lines.append(f"{backbone}: at most {_pct(top['test_accuracy'])} test accuracy ({method_label(top)}).")
    return lines


def _interval(row: dict) -> str:
    iv = row.get("test_interval95")
    return f" (95 % interval {100 * iv[0]:.1f}-{100 * iv[1]:.1f} %)" if iv else ""


def _within_noise(rows: list[dict]) -> str | None:
    """The methods the test cannot tell from the best (McNemar p >= 0.05), in words."""
    from .stats import NOISE

    close = [r for r in rows if r.get("vs_best") and r["vs_best"]["p_value"] >= NOISE]
    if not close:
        return None
    names = ", ".join(f"{r['backbone']} + {method_label(r)} ({_pct(r['test_accuracy'])}, "
                      f"p = {r['vs_best']['p_value']:.2f})" for r in close[:4])
    more = f" and {len(close) - 4} more" if len(close) > 4 else ""
    return (f"Within noise of the best on this test set (McNemar's exact test, p >= {NOISE}): {names}{more}; "
            "the test cannot rank these.")


def _selection_score(row: dict) -> str:
    cv = row.get("cv")
    if cv and "accuracy_std" in cv:
        return f"{_pct(cv['accuracy'])} ± {100 * cv['accuracy_std']:.1f}"
    return _pct(row.get("val_accuracy"))


def _results_table(report: dict) -> list[list[str]]:
    head = ["backbone", "method", "test accuracy", "95 % interval", "p vs best", "balanced accuracy",
            "macro-F1", "n_train", "fit s", "CV / val accuracy", "best"]
    body = [[r["backbone"], method_label(r), _pct(r["test_accuracy"]),
             "-" if not r.get("test_interval95") else
             f"{100 * r['test_interval95'][0]:.1f}-{100 * r['test_interval95'][1]:.1f} %",
             f"{r['vs_best']['p_value']:.3f}" if r.get("vs_best") else "-", _pct(r["balanced_accuracy"]),
             f"{r['macro_f1']:.3f}", str(r["n_train"]), f"{r['fit_seconds']:.2f}",
             _selection_score(r), "★" if r.get("best") else ""] for r in report["results"]]
    return [head, *body]


def _networks_table(report: dict) -> list[list[str]]:
    head = ["backbone", "method", "image size", "epochs run", "best epoch", "training precision",
            "training images/s", "training s", "wall s", "val accuracy", "test accuracy"]
    body = [[r["backbone"], method_label(r), str(r["image_size"]), str(r["epochs_run"]), str(r["best_epoch"]),
             r["precision"], f"{r['train_images_per_second']:.1f}", f"{r['train_seconds']:.0f}",
             f"{r['fit_seconds']:.0f}", _pct(r["val_accuracy"]), _pct(r["test_accuracy"])]
            for r in report["results"] if r["method"] in ("finetune", "scratch")]
    return [head, *body]


def _recipes_table(report: dict) -> list[list[str]]:
    """Each feature recipe's cost beside what it bought: its width, its extraction time per
    image (every view of every part, as measured when its stores were made) and its best
    head by cross-validated (or validation) accuracy, with that head's test accuracy."""
    base = report["extraction"][0].get("ms_per_image")
    head = ["features", "dims", "extract ms / image", "x first", "best head", "CV / val accuracy",
            "test accuracy"]
    body = []
    for e in report["extraction"]:
        rows = [r for r in report["results"]
                if r["backbone"] == e["backbone"] and r.get("val_accuracy") is not None]
        if not rows:
            continue
        top = max(rows, key=lambda r: r["val_accuracy"])
        ms = e.get("ms_per_image")
        body.append([e["backbone"], str(e.get("dim", "")), "-" if ms is None else f"{ms:.1f}",
                     "-" if not (ms and base) else f"{ms / base:.1f}", method_label(top),
                     _selection_score(top), _pct(top["test_accuracy"])])
    return [head, *body]


def _per_class_table(report: dict) -> list[list[str]]:
    return [["class", "precision", "recall", "F1", "support"]] + [
        [c["class"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])]
        for c in report["best"]["per_class"]]


def _extraction_table(report: dict) -> list[list[str]]:
    return [["backbone", "images", "images/s", "precision", "device", "feature dim"]] + [
        [e["backbone"], str(e["images"]),
         "-" if e["images_per_second"] is None else f"{e['images_per_second']:.1f}",
         e.get("precision", ""), e.get("device", ""), str(e.get("dim", ""))] for e in report["extraction"]]


def environment_table(report: dict) -> list[list[str]]:
    return [["item", "value"]] + [[k, str(v)] for k, v in report["environment"].items() if v is not None]


def _figures(report: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figs = {}
    best = report["best"]
    classes = [c["class"] for c in best["per_class"]]
    cm = best["confusion_matrix"]
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n), dpi=110)
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i][j] > 0.5 * max(map(max, cm)) else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{best['backbone']} + {best['method']}", fontsize=9)
    figs["confusion.png"] = _png(fig, plt)

    if report["efficiency"]:
        fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
        for curve in report["efficiency"]:
            xs = [pt["per_class"] for pt in curve["points"]]
            ys = [100 * pt["mean"] for pt in curve["points"]]
            sd = [100 * pt["std"] for pt in curve["points"]]
            trained = curve["method"] in ("finetune", "scratch")  # the networks: dashed, square markers
            line, = ax.plot(xs, ys, marker="s" if trained else "o", linestyle="--" if trained else "-",
                            label=f"{curve['backbone']} + {method_label(curve)}")
            ax.fill_between(xs, [a - b for a, b in zip(ys, sd)], [a + b for a, b in zip(ys, sd)],
                            color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training images per class (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("Data efficiency (heads: mean ± s.d. over random draws; networks: one draw)",
                     fontsize=9)
        figs["efficiency.png"] = _png(fig, plt)
    return figs


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sections(report: dict, figs: dict[str, bytes]) -> list[tuple[str, str, object]]:
    """(title, kind, content) in reading order; kind is text, table or figure."""
    d = report.get("data", {})
    data_lines = [f"train: {d.get('train')} ({d.get('n_train')} images)",
                  f"validation: {d.get('validation')}"
                  + (f" ({d['n_val']} images)" if d.get("n_val") else ""),
                  f"test: {d.get('test')} ({d.get('n_test')} images), scored once",
                  f"classes: {', '.join(d.get('classes', []))}"]
    out = [("Summary", "text", summary(report)), ("Data", "text", data_lines),
           ("Results", "table", _results_table(report)), ("Protocol", "text", [report.get("protocol", "")])]
    if any("recipe" in e for e in report["extraction"]):
        out.append(("Feature recipes: accuracy and cost", "table", _recipes_table(report)))
    if any(r["method"] in ("finetune", "scratch") for r in report["results"]):
        out.append(("Trained networks", "table", _networks_table(report)))
    out += [(f"Best method: {report['best']['backbone']} + {report['best']['method']}", "table",
             _per_class_table(report)),
            ("Confusion matrix", "figure", "confusion.png")]
    if "efficiency.png" in figs:
        out.append(("Data efficiency", "figure", "efficiency.png"))
    out += [("Extraction speed", "table", _extraction_table(report))]
    if report.get("skipped"):
        out.append(("Skipped files", "text",
                    [f"{s['split']}/{s['key']}: {s['reason']}" for s in report["skipped"]
                                               if s["backbone"] == report["extraction"][0]["backbone"]]))
    out.append(("Environment", "table", environment_table(report)))
    return out


def to_markdown(report: dict, figs: dict[str, bytes]) -> str:
    return markdown(f"featx report: {report['name']}",
                    f"{report.get('created', '')}, {report.get('seconds', '')} s", _sections(report, figs))


def markdown(title: str, subtitle: str, sections: list[tuple[str, str, object]]) -> str:
    """A Markdown page of (title, kind, content) sections; figures are linked by file name."""
    parts = [f"# {title}", f"_{subtitle}_"]
    for heading, kind, content in sections:
        parts.append(f"## {heading}")
        if kind == "text":
            parts.append("\n".join(f"- {line}" for line in content))
        elif kind == "table":
            parts.append(_md_table(content))
        else:
            parts.append(f"![{heading}]({content})")
    return "\n\n".join(parts) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px "
        "8px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}")


def to_html(report: dict, figs: dict[str, bytes]) -> str:
    return html_page(f"featx report: {report['name']}",
                     f"{report.get('created', '')}, {report.get('seconds', '')} s",
                     _sections(report, figs), figs)


def html_page(title: str, subtitle: str, sections: list[tuple[str, str, object]],
              figs: dict[str, bytes]) -> str:
    """A self-contained HTML page of (title, kind, content) sections, figures embedded."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p><em>{html.escape(subtitle)}</em></p>"]
    for heading, kind, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if kind == "text":
            parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in content) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(content))
        else:
            data = base64.b64encode(figs[content]).decode("ascii")
            parts.append(f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{data}">')
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md, report.html and the figures; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = _figures(report)
    files = dict(figs)
    files["report.json"] = (json.dumps(report, indent=2) + "\n").encode()
    files["report.md"] = to_markdown(report, figs).encode()
    files["report.html"] = to_html(report, figs).encode()
    paths = {}
    for name, data in files.items():
        paths[name] = write_bytes(out / name, data)
    return paths
