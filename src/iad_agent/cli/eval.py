"""``iad eval``: the benchmark harness (k-shot runs, ablations, MMAD-protocol questions, reports)."""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from iad_agent.cli import app, console, fail
from iad_agent.cli import options as opts

RUNS_FILE = "runs.jsonl"


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _command() -> str:
    if sys.argv and Path(sys.argv[0]).name == "iad":
        return "iad " + shlex.join(sys.argv[1:])
    return "iad eval (called in-process)"


def _log_run(out: Path, started: float, kind: str, **extra: Any) -> None:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    entry = {"command": _command(), "kind": kind, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(time.time() - started, 1),
             "cpu_s": round(sum(u.ru_utime + u.ru_stime for u in usage), 1), "load_avg": list(os.getloadavg()),
             "cores": os.cpu_count(), "cpu": _cpu_name(), **extra}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / RUNS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def _meta(out: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    runs = []
    if (out / RUNS_FILE).exists():
        for line in (out / RUNS_FILE).read_text(encoding="utf-8").splitlines():
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    groups: dict[tuple, float] = {}
    for r in records:
        key = (r["dataset"], r["category"], str(r["shots"]), r["seed"])
        groups[key] = max(groups.get(key, 0.0), float(r.get("group_wall_s") or 0.0))
    last = runs[-1] if runs else {}
    return {"runs": runs, "date": last.get("finished"), "cores": last.get("cores", os.cpu_count()),
            "cpu": last.get("cpu", _cpu_name()), "workers": last.get("workers"), "threads": last.get("threads"),
            "total_cpu_s": sum(r.get("cpu_s", 0.0) for r in runs) if runs else None,
            "total_wall_s": sum(r.get("wall_s", 0.0) for r in runs) if runs else None,
            "compute_s": round(sum(groups.values()), 1)}


def _datasets(dataset: list[str], root: Path | None) -> list[tuple[str, Path]]:
    from iad_agent.datasets import READERS
    from iad_agent.eval.plan import available_datasets, default_root

    names = list(dict.fromkeys(dataset or ["mvtec"]))
    if "all" in names:
        if len(names) > 1 or root is not None:
            fail("--dataset all runs every dataset under the data root; give it alone and without --root")
        found = available_datasets()
        if not found:
            fail("no dataset found under the data root (set IAD_DATA)")
        return found
    unknown = [n for n in names if n not in READERS]
    if unknown:
        fail(f"unknown dataset {', '.join(unknown)}; valid names: {', '.join(sorted(READERS))}, all")
    if root is not None and len(names) > 1:
        fail("--root applies to a single --dataset")
    pairs = []
    for n in names:
        path = root if root is not None else default_root(n)
        if not path.is_dir():
            fail(f"{path}: dataset folder not found (give --root)")
        pairs.append((n, path))
    return pairs


@app.command("eval")
def eval_command(
    dataset: list[str] = typer.Option(None, "--dataset", help="Dataset reader (repeatable): mvtec, visa, mpdd, btad, mvtec3d, loco, "
                                      "magnetic_tile, deeppcb, kolektor, folder (good/ + one folder per defect type, "
                                      "--root needed), or 'all' (every dataset under the data root)."),
    root: Path = typer.Option(None, "--root", help="Dataset folder (default: its folder under the data root)."),
    category: list[str] = typer.Option(None, "--category", help="Category to run (repeatable; default all)."),
    shots: list[str] = typer.Option(None, "--shots", help="Good references per product (repeatable): a number, 'all', or 0 = zero-shot (each test image "
                                  "against the category's other test images). Default 1."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds for drawing the references (mean ± std over them)."),
    policy: list[str] = typer.Option(None, "--policy", help="Policy (repeatable): knn, embedded, embedded-no-zoom, "
                                     "embedded-no-retriever, embedded-no-highfreq, embedded+highfreq (a tool the gate "
                                     "switched off, back on), embedded-fixed-weights (hand-set tool weights), embedded-no-selfsim (the plain "
                                     "nearest-neighbour look), embedded-no-brightness, embedded-no-clip (a product registered "
                                     "without that step), openai, hf; "
                                     "for --shots 0: zero-shot (default), "
                                     "zero-shot-mutual, zero-shot-self, zero-shot-no-clip. Default knn + embedded."),
    disable_tool: list[str] = typer.Option([], "--disable-tool", help="Tool to leave out of every tool-using policy (repeatable)."),
    max_test: int = typer.Option(None, "--max-test", min=1, help="Cap on test images per category (evenly spaced within each class)."),
    max_normals: int = typer.Option(50, "--max-normals", min=1, help="Cap on references for --shots all and on a held-out pool."),
    fpr: float = typer.Option(0.05, "--fpr", min=0.001, max=0.5, help="False-alarm rate the thresholds are set for."),
    max_steps: int = typer.Option(6, "--max-steps", min=1, help="Step budget of the agent loop."),
    workers: int = typer.Option(None, "--workers", min=1, help="Processes evaluating (dataset, category, shots, seed) "
                                "groups in parallel (default: one per core, at most one per group)."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch/faiss threads per process. More threads than free "
                                "cores slows everything down sharply on a shared machine."),
    out: Path = typer.Option(Path("results"), "--out", help="Output folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue a run in --out, skipping finished records."),
    questions: str = typer.Option(None, "--questions", help="'mmad-style': generate MMAD-style questions from the "
                                  "datasets and answer them instead of the k-shot run."),
    mmad: Path = typer.Option(None, "--mmad", help="An MMAD question file (mmad.json schema) to answer and score."),
    mmad_root: Path = typer.Option(None, "--mmad-root", help="Folder the MMAD image paths are relative to (default: the file's folder)."),
    backbone: str = opts.BACKBONE,
    layers: str = opts.LAYERS,
    resolution: int = typer.Option(256, "--resolution", help="Input resolution (short side) of the feature extractor."),
    base_url: str = opts.BASE_URL,
    model: str = opts.MODEL,
    api_key_env: str = opts.API_KEY_ENV,
    timeout: float = opts.TIMEOUT,
    max_retries: int = opts.MAX_RETRIES,
    native_tools: bool = opts.NATIVE_TOOLS,
    max_image_side: int = opts.MAX_IMAGE_SIDE,
    adapter: str = opts.ADAPTER,
    dtype: str = opts.DTYPE,
    device: str = opts.DEVICE,
    temperature: float = opts.TEMPERATURE,
    max_new_tokens: int = opts.MAX_NEW_TOKENS,
) -> None:
    """Benchmark policies side by side: k-shot metrics, ablations, MMAD questions; writes metrics.json,
    samples.csv and report.md (with plots) into --out."""
    from iad_agent import api
    from iad_agent.datasets import DatasetError
    from iad_agent.eval import plan, report, runner
    from iad_agent.eval.records import RECORDS_FILE, done_keys, read_records

    started = time.time()
    policies = list(dict.fromkeys(policy or ["knn", "embedded"]))
    options = opts.vlm_options(base_url=base_url, model=model, api_key_env=api_key_env, timeout=timeout,
                               max_retries=max_retries, native_tools=native_tools, max_image_side=max_image_side,
                               adapter=adapter, dtype=dtype, device=device, temperature=temperature,
                               max_new_tokens=max_new_tokens)
    try:
        for name in policies:  # fail on a bad name before any work
            if name not in plan.ZERO_SHOT_LABELS:
                api.resolve_policy(name, disable_tool, options, registering=mmad is None and questions is None)
    except (api.PolicyConfigError, api.MissingExtra) as exc:
        fail(str(exc))
    if questions is not None and questions != "mmad-style":
        fail(f"--questions takes 'mmad-style', got {questions!r}")
    if mmad is not None and questions is not None:
        fail("give either --mmad FILE (answer a question file) or --questions mmad-style (generate them), not both")
    if mmad is not None or questions is not None:
        runner.set_threads(threads)
        _run_mmad(dataset, root, category, policies, disable_tool, options, max_test, max_normals, fpr, max_steps, out,
                  mmad, mmad_root, started, threads)
        return
    try:
        shot_values = plan.parse_shots(shots or ["1"])
    except ValueError as exc:
        fail(str(exc))
    try:
        from iad_agent.vision.backbones import feature_config

        features = feature_config(backbone, resolution, opts.layers(layers))
    except (ValueError, api.MissingExtra) as exc:
        fail(str(exc))
    try:
        config = plan.EvalConfig(datasets=_datasets(dataset, root), categories=category or None, shots=shot_values,
                                 seeds=seeds, policies=policies, disable_tools=tuple(disable_tool), max_test=max_test,
                                 max_normals=max_normals, fpr=fpr, policy_options=options, max_steps=max_steps,
                                 features=features)
        records_path = out / RECORDS_FILE
        if records_path.exists() and not resume:
            fail(f"{records_path} exists: pass --resume to continue that run, or choose another --out")
        done = done_keys(out) if resume else set()
        groups = plan.plan(config, done)
    except (DatasetError, ValueError) as exc:
        fail(str(exc))
    if resume and done:
        console.print(f"resuming: {len(done)} records already in {records_path}", highlight=False)
    total = sum(len(g.test) * len(g.policies) for g in groups)
    n_workers = workers or max(1, min(os.cpu_count() or 1, len(groups)))
    out.mkdir(parents=True, exist_ok=True)
    try:
        with _progress() as progress:
            task = progress.add_task(f"evaluating {len(groups)} groups", total=total or 1)

            def finished(group: plan.Group, n: int) -> None:
                progress.update(task, description=f"[{n}/{len(groups)} groups] last: {group.title}")

            runner.run_groups(groups, config, out, workers=n_workers, threads=threads,
                               on_image=lambda n: progress.advance(task, n), on_group=finished)
    except KeyboardInterrupt:
        _log_run(out, started, "k-shot (interrupted)", workers=n_workers, threads=threads, features=features.to_dict())
        console.print(f"[yellow]interrupted[/]: finished records are in {records_path}; rerun with --resume", highlight=False)
        raise typer.Exit(130)
    _log_run(out, started, "k-shot", workers=n_workers, threads=threads, features=features.to_dict())
    records = read_records(records_path)
    mmad_scores = _read_json(out / "mmad_scores.json")
    doc = report.write_outputs(out, records, _meta(out, records), mmad_scores)
    _print_summary(doc)
    console.print(f"wrote {out / 'metrics.json'}, {out / 'samples.csv'}, {out / 'report.md'} "
                  f"({len(records)} records, {time.time() - started:.0f} s)", highlight=False)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _print_summary(doc: dict[str, Any]) -> None:
    from rich.table import Table

    from iad_agent.eval.report import fmt

    table = Table(title="mean over categories")
    for col in ("shots", "policy", "image AUROC", "bal. acc.", "pixel AUROC", "tool calls", "ms p50", "CPU ms p50"):
        table.add_column(col)
    for s in doc["summary"]:
        table.add_row(str(s["shots"]), s["policy"], fmt(s["image_auroc_mean"]), fmt(s["balanced_accuracy_mean"]),
                      fmt(s["pixel_auroc_mean"]), fmt(s["tool_calls_per_image_mean"], digits=2),
                      fmt(s["ms_per_image_p50_mean"], digits=0), fmt(s["cpu_ms_per_image_p50_mean"], digits=0))
    console.print(table)


def _run_mmad(dataset, root, category, policies, disable_tool, options, max_test, max_normals, fpr, max_steps, out,
              mmad_path, mmad_root, started, threads) -> None:  # noqa: ANN001 - CLI plumbing
    """Generate (``--questions mmad-style``) or read (``--mmad``) questions, answer them, score them."""
    from iad_agent import api
    from iad_agent.datasets import DatasetError, list_categories, load_dataset
    from iad_agent.eval import mmad, plan, report
    from iad_agent.eval.records import RECORDS_FILE, read_records

    out.mkdir(parents=True, exist_ok=True)
    try:
        if mmad_path is not None:
            questions = mmad.load_questions(mmad_path)
            image_root = mmad_root or mmad_path.parent
        else:
            pairs = _datasets(dataset, root)
            categories = []
            for name, path in pairs:
                cats = [c for c in list_categories(name, path) if not category or c in category]
                for cat in cats:
                    split = plan.split_dataset(load_dataset(name, path, cat), max_normals)
                    test = plan.cap_test(split.test, max_test) if max_test else split.test
                    categories.append((split.pool, test))
            if not categories:
                fail(f"no category {', '.join(category)} in {', '.join(n for n, _ in pairs)}")
            image_root = mmad_root or _key_root([p for _, p in pairs])
            with _progress() as progress:
                task = progress.add_task("writing MMAD-style questions", total=sum(len(t) for _, t in categories))
                questions = mmad.generate_questions(categories, image_root, on_image=lambda n: progress.advance(task, n))
            qpath = out / "mmad_style_questions.json"
            qpath.write_text(json.dumps(questions, indent=1), encoding="utf-8")
            console.print(f"wrote {len(questions)} images' questions to {qpath} (image root {image_root})", highlight=False)
        resolved = [api.resolve_policy(name, disable_tool, options) for name in policies]
        with _progress() as progress:
            task = progress.add_task("answering MMAD questions", total=len(questions) * len(resolved))
            answers = mmad.answer_questions(questions, image_root, resolved, fpr=fpr, max_steps=max_steps,
                                            on_image=lambda n: progress.advance(task, n))
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    scores = {}
    for label, entries in answers.items():
        (out / f"mmad_answers_{label}.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
        scores[label] = mmad.score_mmad(entries)
    (out / "mmad_scores.json").write_text(json.dumps(scores, indent=1), encoding="utf-8")
    _log_run(out, started, "mmad", workers=1, threads=threads)
    records = read_records(out / RECORDS_FILE)
    report.write_outputs(out, records, _meta(out, records), scores)
    for label, s in scores.items():
        avg = s["average"]
        console.print(f"{label}: MMAD average {report.fmt(report.pct(avg['average']), digits=1)} "
                      f"(overkill {report.fmt(report.pct(avg['overkill']), digits=1)}, miss "
                      f"{report.fmt(report.pct(avg['miss']), digits=1)}, {avg['n_questions']} questions)", highlight=False)
    console.print(f"wrote {out / 'mmad_scores.json'} and {out / 'report.md'}", highlight=False)


def _key_root(roots: list[Path]) -> Path:
    """The folder image keys are relative to: the data root when every dataset is inside it."""
    from iad_agent.datasets import data_root

    try:
        base = data_root().resolve()
        if all(Path(r).resolve().is_relative_to(base) for r in roots):
            return base
    except Exception:  # no data root: fall back to the datasets' common parent
        pass
    return Path(os.path.commonpath([str(Path(r).resolve().parent) for r in roots]))
