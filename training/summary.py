"""Print the models in a models/ folder with their verified cards' headline figures.

python -m training.summary models
"""

from __future__ import annotations

import sys
from pathlib import Path

from service.cards import CardError, ModelCard, discover_cards


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
                f"{training['epochs_run']} ep, {training['wall_time_s'] / 60:.0f} min",
            ]
        )
    return table


def render(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "models")
    try:
        cards = discover_cards(root)
    except CardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not cards:
        print(f"no models (no */card.json) under {root}", file=sys.stderr)
        return 1
    print(render(rows(cards)))
    print(f"\n{len(cards)} models under {root}; every file matches its card's sha256.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
