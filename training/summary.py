"""Print the models in a models/ folder with their verified cards' headline figures.

python -m training.summary models
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from service.model.cards import CardError, ModelCard
from service.model.repository import discover_cards


def headline(card: ModelCard) -> str:
    metrics = card.data["metrics"]
    if card.task == "digit-classification":
        return f"test acc {100 * metrics['test_accuracy']:.2f}%"
    return (
        f"val {metrics['val_loss_nats_per_char']:.3f} nats/char "
        f"({metrics['val_bits_per_char']:.3f} bits)"
    )


def architecture(card: ModelCard) -> str:
    arch = card.data["architecture"]
    direction = "bi-" if arch.get("bidirectional") else ""
    return f"{direction}{arch['cell']} {arch['num_layers']}x{arch['hidden_size']}"


def training_time(training: dict[str, Any]) -> str:
    """Epochs and minutes of every training stage, first to last: a model fine-tuned from an
    earlier run (`started_from`, the photo stage of mnist-bigru) shows both, "20 + 4 ep,
    23 + 5 min", as the README's table does, not the last stage alone."""
    stages = []
    stage: Any = training
    while isinstance(stage, dict) and "epochs_run" in stage:
        stages.append(stage)
        stage = stage.get("started_from")
    stages.reverse()
    epochs = " + ".join(str(s["epochs_run"]) for s in stages)
    minutes = " + ".join(f"{s['wall_time_s'] / 60:.0f}" for s in stages)
    return f"{epochs} ep, {minutes} min"


def rows(cards: list[ModelCard]) -> list[list[str]]:
    table = [
        ["model", "task", "architecture", "params", "metric", "onnx", "sizes (onnx/ts)", "trained"]
    ]
    for card in cards:
        files = card.data["files"]
        training = card.data["training"]
        onnx_export = card.data["export"]["onnx"]
        table.append(
            [
                card.name,
                card.task,
                architecture(card),
                f"{card.data['architecture']['parameters']:,}",
                headline(card),
                f"{onnx_export['exporter']} op{onnx_export['opset']}",
                f"{files['onnx']['bytes'] / 1e6:.2f}/{files['torchscript']['bytes'] / 1e6:.2f} MB",
                training_time(training),
            ]
        )
    return table


def render(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def exporter_table(cards: list[ModelCard]) -> str:
    """Markdown: each model's ONNX exporter candidates, validity and onnxruntime latency."""
    lines = [
        "| model | exporter | valid | ONNX ops | latency (ms, 1 thread) | chosen |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for card in cards:
        onnx_export = card.data["export"]["onnx"]
        for cand in onnx_export["candidates"]:
            latency = ", ".join(f"{k}: {v:.3f}" for k, v in cand["latency_ms"].items())
            status = "yes" if cand["valid"] else f"no: {cand['error']}"
            ops = (
                "RNN/LSTM/GRU op"
                if {"RNN", "LSTM", "GRU"} & set(cand["ops"])
                else ("unrolled MatMul/Tanh" if cand["ops"] else "-")
            )
            chosen = "**yes**" if cand["exporter"] == onnx_export["exporter"] else ""
            lines.append(
                f"| {card.name} | {cand['exporter']} | {status} | {ops} | "
                f"{latency or '-'} | {chosen} |"
            )
    return "\n".join(lines)


def parity_table(cards: list[ModelCard]) -> str:
    """Markdown: max |logit difference| against PyTorch for each model and format."""
    lines = [
        "| model | ONNX max abs diff | TorchScript max abs diff | argmax identical | tolerance |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for card in cards:
        export = card.data["export"]
        onnx_p, ts_p = (
            export["onnx"]["parity_vs_pytorch"],
            export["torchscript"]["parity_vs_pytorch"],
        )
        same = onnx_p["argmax_identical"] and ts_p["argmax_identical"]
        lines.append(
            f"| {card.name} | {onnx_p['max_abs_diff']:.2e} | "
            f"{ts_p['max_abs_diff']:.2e} | {'yes' if same else 'NO'} | "
            f"{export['tolerance']:g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    markdown = "--markdown" in args
    args = [a for a in args if a != "--markdown"]
    root = Path(args[0] if args else "models")
    try:
        cards = discover_cards(root)
    except CardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not cards:
        print(f"no models (no */card.json) under {root}", file=sys.stderr)
        return 1
    if markdown:
        print(exporter_table(cards) + "\n\n" + parity_table(cards))
        return 0
    print(render(rows(cards)))
    print(f"\n{len(cards)} models under {root}; every file matches its card's sha256.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
