"""Markdown tables from the benchmark JSON, in README.md, benchmarks/README.md and each sitting's page beside its
JSON (benchmarks/results/*.md): results/NAME.json is rendered between `<!-- results:NAME -->` and
`<!-- /results:NAME -->`, so no number there is typed by hand. Pure JSON in, text out: no torch import.

    python -m benchmarks.report           # rewrite the tables in every page; --check: exit 1 if one is stale
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from benchmarks.common import RESULTS_DIR

README = Path(__file__).resolve().parent / "README.md"
READMES = (README.parent.parent / "README.md", README)  # the project's, with the race table; the benchmarks'
# <!-- results:NAME --> renders results/NAME.json in full; <!-- results:NAME#headline --> its headline only (a race
# in one line, a speed run in one table row per precision).
MARKER = re.compile(r"(<!-- results:(?P<name>[\w.-]+)(?:#(?P<view>\w+))? -->\n)(.*?)"
                    r"(<!-- /results:(?P=name)(?:#(?P=view))? -->)", re.S)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _quartiles(values: list[float]) -> list[float]:
    return statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def machine_line(m: dict) -> str:
    """One sentence naming the machine a result came from."""
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    load = m.get("load_average_1m")
    end = m.get("load_average_1m_end")
    load_text = "" if load is None else f", load average {load}" + ("" if end is None else f" → {end}")
    flags = f" ({', '.join(m['cpu_bf16_flags'])})" if m.get("cpu_bf16_flags") else ""
    children = f", {m['child_threads']} threads per child" if m.get("child_threads") else ""
    return (f"{m.get('cpu')} ({m.get('cpu_count')} cores, {m.get('torch_threads')} torch threads{children}, "
            f"{m.get('cpu_capability')}{', native bf16' + flags if m.get('cpu_native_bf16') else ''}){gpu}; "
            f"torch {m.get('torch')}, transformers {m.get('transformers')}, peft {m.get('peft')}{load_text}")


def speed_tables(data: dict) -> str:
    """Training-step and eval tables for one speed-*.json, one pair per precision."""
    cpu = data["device"] == "cpu"
    parts = ([f"`{data['command']}`"] if data.get("command") else []) + [
             f"Machine: {machine_line(data['machine'])}. {data['repeats']} interleaved rounds after "
             f"{data['warmup']} warm-up round(s). Each ratio is the median of per-round wall-time ratios, "
             "[its interquartile range]" + (" and (the same median from process CPU time, which leaves out "
                                            "the time other jobs held our core)." if cpu else ".")]
    if data.get("note"):
        parts.append(f"Note: {data['note']}.")

    def pair(part: dict, key: str) -> str:
        """median [interquartile range] of the per-round wall ratios, (CPU-time median)."""
        a, b = key.split("/")
        q1, _, q3 = _quartiles([x / y for x, y in zip(part["seconds"][a], part["seconds"][b])])
        text = f"{part['ratio'][key]:.3f} [{q1:.2f}–{q3:.2f}]"
        return text + (f" ({part['cpu_ratio'][key]:.3f})" if cpu else "")

    for precision, r in data["precisions"].items():
        t, e = r["train"], r["eval"]
        label = "fp32" if precision == "fp32" else "bf16 autocast"
        vs = {"ours": "1", "peft": pair(t, "ours/peft"), "floor": pair(t, "ours/floor")}
        if "ours_all_linear" in t["median_seconds"]:  # results from before it was measured lack it
            vs["ours_all_linear"] = pair(t, "ours/ours_all_linear")
        if "ours_all_linear_plain" in t["median_seconds"]:  # nor the plain formula beside the fused path
            vs["ours_all_linear_plain"] = pair(t, "ours/ours_all_linear_plain")
        peak = "cuda_peak_bytes" in t["memory"]["ours"]
        rows = []
        for name in [n for n in ("ours", "ours_all_linear", "ours_all_linear_plain", "peft", "floor") if n in vs]:
            m = t["memory"][name]
            mem = m["saved_activation_bytes"] + m["grad_bytes"] + m["optimizer_bytes"]
            rows.append([name, _ms(t["median_seconds"][name]), vs[name], f"{t['trainable_params'][name]:,}",
                         _mib(mem)] + ([_mib(m["cuda_peak_bytes"])] if peak else []))
        header = ["training step", "median", "ours / this", "trainable params",
                  "saved activations + grads + AdamW"] + (["CUDA peak over weights"] if peak else [])
        held = ", frozen weights held in bf16 (cast_frozen) by ours and floor" if t.get("cast_frozen") else ""
        parts.append(f"**{label}, training step (forward, backward, AdamW, zero_grad){held}, batch {r['batch_size']} "
                     f"× seq {r['seq_len']}**\n\n" + _table(header, rows))
        vs = {"ours_merged": "1", "peft_unmerged": pair(e, "peft_unmerged/ours_merged"),
              "peft_merged": pair(e, "peft_merged/ours_merged")}
        rows = [[name, _ms(e["median_seconds"][name]), f"{e['examples_per_s'][name]:,.1f}", vs[name]]
                for name in ("ours_merged", "peft_unmerged", "peft_merged")]
        parts.append(f"**{label}, inference (eval, inference_mode), same batch**\n\n"
                     + _table(["inference", "median", "examples/s", "this / ours merged"], rows))
    h = data["headline"]
    parts.append("Headline (wall time), against targets ours/PEFT ≤ 1, ours/floor ≤ 1.05, eval speedup ≥ 3×: "
                 + "; ".join(f"{p}: ours/PEFT {h['step_ratio_vs_peft'][p]:.3f}, ours/floor "
                             f"{h['step_ratio_vs_floor'][p]:.3f}, eval speedup vs PEFT unmerged "
                             f"{h['eval_speedup_vs_peft_unmerged'][p]:.2f}×" for p in h["step_ratio_vs_peft"]) + ".")
    if "all_linear_step_ratio_vs_query_value" in h:
        parts.append("All-linear r=6 step / query-value r=4 step (target ≤ 1.15): " + "; ".join(
            f"{p}: {r:.3f}" for p, r in h["all_linear_step_ratio_vs_query_value"].items()) + ".")
    if "fused_step_ratio_vs_plain" in h:
        parts.append("All-linear r=6 step on the fused path (lora.fuse, what python -m train runs) / the same on "
                     "LoRALinear's plain formula (kept where it saves 5% or more): " + "; ".join(
                         f"{p}: {r:.3f}" for p, r in h["fused_step_ratio_vs_plain"].items()) + ".")
    return "\n\n".join(parts)


def speed_headline(data: dict) -> str:
    """One speed-*.json in brief: its command and machine, then one row per precision with each headline ratio
    against its target, met or missed (the full tables are `speed_tables`)."""
    h = data["headline"]
    cols = [("step_ratio_vs_peft", "ours / PEFT step (≤ 1)", ".3f", lambda v: v <= 1),
            ("step_ratio_vs_floor", "ours / floor step (≤ 1.05)", ".3f", lambda v: v <= 1.05),
            ("eval_speedup_vs_peft_unmerged", "eval speedup vs PEFT unmerged (≥ 3×)", ".2f", lambda v: v >= 3),
            ("all_linear_step_ratio_vs_query_value", "all-linear r=6 / query-value r=4 step (≤ 1.15)", ".3f",
             lambda v: v <= 1.15),
            ("fused_step_ratio_vs_plain", "fused / plain all-linear step", ".3f", None)]
    cols = [c for c in cols if c[0] in h]
    rows = []
    for p, r in data["precisions"].items():
        row = [f"{'fp32' if p == 'fp32' else 'bf16 autocast'}, {r['batch_size']} × {r['seq_len']}"]
        for key, _, fmt, target in cols:
            v = h[key][p]
            row.append(f"{v:{fmt}}" + ("×" if key.startswith("eval") else "")
                       + ("" if target is None else f" ({'met' if target(v) else 'missed'})"))
        rows.append(row)
    head = ((f"`{data['command']}` on " if data.get("command") else "Machine: ") + machine_line(data["machine"])
            + f". {data['repeats']} interleaved rounds after {data['warmup']} warm-up round(s); each figure is the "
            "median of per-round wall-time ratios.")
    return "\n\n".join([head, _table(["precision, batch × seq"] + [c[1] for c in cols], rows)])


def accuracy_table(data: dict) -> str:
    """The pre-race accuracy.json (one sequential pair, ours against the reference): quality, times,
    and ours / reference for each time. Kept so that an older results file still renders."""
    o, r, ratios = data["ours"], data["reference"], data["ratios"]
    rows = [
        ["accuracy", f"{o['accuracy'] * 100:.2f}%", f"{r['accuracy'] * 100:.2f}%",
         f"{data['headline']['accuracy_delta_pp']:+.2f} pp"],
        ["macro-F1", f"{o['macro_f1'] * 100:.2f}", f"{r['macro_f1'] * 100:.2f}", ""],
        ["training wall time", f"{o['train_seconds']:,.1f} s", f"{r['train_seconds']:,.1f} s",
         f"{ratios['train_seconds']:.3f}×"],
        ["evaluation wall time", f"{o['eval_seconds']:,.1f} s", f"{r['eval_seconds']:,.1f} s",
         f"{ratios['eval_seconds']:.3f}×"],
        ["training examples/s", f"{o['train_examples_per_s']:,.1f}", f"{r['train_examples_per_s']:,.1f}",
         f"{ratios['train_examples_per_s']:.2f}×"],
        ["trainable parameters", f"{o['trainable_params']:,}", f"{r['trainable_params']:,}", ""],
    ]
    s = data["setup"]
    head = (f"Machine: {machine_line(data['machine'])}. Model {s['model_name']}, {s['train_examples']} training "
            f"examples × {s['epochs']} epoch(s), {s['eval_examples']} evaluation examples"
            + (f", our extra args `{' '.join(s['extra_args'])}`" if s.get("extra_args") else "") + ".")
    h = data["headline"]
    fast, close = h["train_time_ratio_vs_reference"] <= 0.33, h["accuracy_delta_pp"] >= -0.3
    target = (f"Targets: training time ≤ 0.33× reference ({'met' if fast else 'missed'}), "
              f"accuracy ≥ reference − 0.3 pp ({'met' if close else 'missed'}).")
    return "\n\n".join([head, _table(["", "ours", "reference", "ours / reference"], rows), target])


def _ratio(pair: dict | None) -> str:
    """median [min–max] of paired per-round ratios; a dash where the pair did not race."""
    if pair is None:
        return "–"
    if pair["min"] == pair["max"]:
        return f"{pair['median']:.3f}×"
    return f"{pair['median']:.3f}× [{pair['min']:.2f}–{pair['max']:.2f}]"


def _accuracy(s: dict) -> str:
    std = s.get("accuracy_std")
    return f"{s['accuracy_mean'] * 100:.2f}%" + ("" if std is None else f" ± {std * 100:.2f}")


def _under_way(data: dict) -> str:
    """For a race still running (or cut off): which runs its figures cover so far; empty for a finished race."""
    if data.get("complete", True):
        return ""
    done = ", ".join(f"{r['contestant']} (seed {r['seed']})" for r in data["runs"])
    return f"**Race under way**: {len(data['runs'])} run(s) so far ({done}); every figure may still change. "


def race_table(data: dict) -> str:
    """The race: per contestant its precision, whole-process time, paired ratios against both
    references (measured, then counted work beside them), loop time and accuracy."""
    summary, ratios, setup = data["summary"], data["ratios"], data["setup"]
    bases = [b for b in ("reference", "tuned", "engine") if b in summary]
    scale, unit = (1e9, "G") if max(s["work_total"] for s in summary.values()) >= 1e9 else (1e6, "M")
    header = ["contestant", "precision", "epochs", "whole process", "CPU time", "training loop"]
    header += [f"time ÷ {b}" for b in bases] + ["accuracy", f"work ({unit} token-layers)"]
    header += [f"work ÷ {b}" for b in bases]
    rows = []
    for name, s in summary.items():
        row = [s["label"] + (f", LoRA from layer {s['start_layer']}" if s.get("start_layer") else ""),
               s["precision"], s["epochs"], f"{s['wall_seconds']:,.1f} s", f"{s['cpu_seconds']:,.1f} s",
               f"{s['loop_seconds']:,.1f} s"]
        row += ["1" if b == name else _ratio(ratios.get(f"{name}/{b}", {}).get("wall")) for b in bases]
        row += [_accuracy(s), f"{s['work_total'] / scale:,.3f}"]
        row += ["1" if b == name else _ratio(ratios.get(f"{name}/{b}", {}).get("work")) for b in bases]
        rows.append(row)
    seeds = setup["seeds"]
    model = setup.get("model_name") or Path(setup["model"]).name
    head = (f"`{data['command']}`\n\n{_under_way(data)}Machine: {machine_line(data['machine'])}. Model {model} "
            f"({setup['layers']} layers), {setup['train_examples']:,} training × {setup['eval_examples']:,} "
            f"evaluation examples, {len(seeds)} round(s) (seeds {', '.join(map(str, seeds))}), contestants "
            "alternating A B C D, D C B A. Times are medians over rounds; each ratio is the median of per-round "
            "ratios [min–max]. Whole process: launch to exit, cold token cache. Accuracy: final epoch, mean ± std "
            f"over seeds. Work: {setup['work']} (counted, noise-free).")
    h = data["headline"]
    lines = [f"{t['target']}: {'met' if t['met'] else 'missed'} ("
             + (f"{t['value'] * 100:+.2f} pp" if "accuracy" in t["target"] else f"{t['value']:.3f}×") + ")"
             for t in data.get("targets", []) if t["met"] is not None]
    parts = [head, _table(header, rows)]
    if lines:
        parts.append("Targets: " + "; ".join(lines) + ".")
    if h.get("work_ratio_vs_reference") is not None and h.get("time_ratio_vs_reference") is not None:
        parts.append(f"Fast recipe against the reference as specified: measured {h['time_ratio_vs_reference']:.3f}×, "
                     f"counted work {h['work_ratio_vs_reference']:.3f}×.")
    return "\n\n".join(parts)


def race_headline(data: dict) -> str:
    """The race in one line: our recipes' accuracy and whole-process time against the tuned reference's, the
    engine alone (our fast recipe against PEFT + Trainer running it), the references' accuracy, the model and
    machine. A race under way names only what has run."""
    s, r, setup = data["summary"], data["ratios"], data["setup"]
    model = setup.get("model_name") or Path(setup["model"]).name
    ours = [f"{label} {_accuracy(s[n])}" + (f" in {r[f'{n}/tuned']['wall']['median']:.3f}×" if f"{n}/tuned" in r
                                            else "")
            for n, label in (("fast", "fast recipe"), ("default", "default")) if n in s]
    parts = [", ".join(ours) + (" the tuned PEFT + Trainer reference's whole-process time"
                                if any(f"{n}/tuned" in r for n in ("fast", "default")) else "")] if ours else []
    if "fast/engine" in r:
        parts.append(f"the fast recipe in {r['fast/engine']['wall']['median']:.3f}× the time of PEFT + Trainer "
                     f"running it ({_accuracy(s['engine'])})")
    refs = [f"{label} {_accuracy(s[n])}" for n, label in (("tuned", "tuned"), ("reference", "as specified"))
            if n in s]
    if refs:
        parts.append(f"PEFT + Trainer {', '.join(refs)}")
    if "ceiling" in s:
        parts.append(f"full fine-tuning {_accuracy(s['ceiling'])}")
    return (f"{_under_way(data)}**{model}** ({setup['layers']} layers; {data['machine'].get('cpu')}, "
            f"{setup['train_examples']:,} training rows, seeds {', '.join(map(str, setup['seeds']))}): "
            f"{'; '.join(parts)}.")


def render(data: dict, view: str | None = None) -> str:
    """The markdown for one results file, by its kind (`view` "headline": the race in one line)."""
    if view == "headline":
        return speed_headline(data) if data.get("benchmark") == "speed" else race_headline(data)
    if data.get("benchmark") == "speed":
        return speed_tables(data)
    return race_table(data) if data.get("benchmark") == "race" else accuracy_table(data)


def update_readme(text: str, results_dir: Path = RESULTS_DIR) -> str:
    """`text` with every marked section replaced by the table of its results/NAME.json
    (a section whose file does not exist yet says so)."""
    def fill(m: re.Match) -> str:
        path = results_dir / f"{m['name']}.json"
        body = render(json.loads(path.read_text()), m["view"]) if path.is_file() else f"_No {path.name} yet._"
        return f"{m.group(1)}{body}\n{m.group(5)}"
    return MARKER.sub(fill, text)


def pages(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """Every page whose marked sections this module fills: the two READMEs, then each sitting's page
    beside its JSON (results/*.md), in name order."""
    return [*READMES, *sorted(results_dir.glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Regenerate the results tables in README.md, benchmarks/README.md and "
                                            "benchmarks/results/*.md.")
    p.add_argument("--check", action="store_true", help="exit 1 if a page's tables are stale")
    p.add_argument("--readme", type=Path, action="append", help="this page only (repeatable)")
    args = p.parse_args(argv)
    stale = False
    for readme in args.readme or pages():
        old = readme.read_text()
        new = update_readme(old)
        if args.check:
            if new != old:
                print(f"{readme} is out of date: run python -m benchmarks.report", file=sys.stderr)
                stale = True
            continue
        if new != old:
            readme.write_text(new)
        print(f"{readme}: {'updated' if new != old else 'already up to date'}")
    return int(stale)


if __name__ == "__main__":
    sys.exit(main())
