"""The character-model task: a recurrent language model on a text corpus, and its sampler.

The corpus is split by position (the last 10% is validation); training reads fixed-length
windows whose borders move every epoch. The best epoch is the one with the lowest validation
loss, reported in nats and bits per character, with a few samples.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from training import data as D
from training import plots
from training.checkpoints import CHECKPOINT_FORMAT, load_best
from training.config import CharRunConfig
from training.loop import fit
from training.nets import CharLM, CharLMConfig, count_parameters
from training.results import RunReport, task_metrics
from training.runtime import Runtime

SAMPLE_PROMPTS = ("ROMEO:\n", "First Citizen:\n", "KING RICHARD III:\nNow ")
SAMPLE_TEMPERATURE = 0.8  # a little below 1: fewer misspellings, still varied


@torch.no_grad()
def generate(
    model: CharLM,
    vocab: D.Vocabulary,
    prompt: str,
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Sample `length` characters after `prompt`, one step at a time with carried state."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([vocab.encode(prompt)], dtype=torch.long, device=device)
    logits, state = model(ids)  # (1, T, V), state after the prompt
    last = logits[0, -1]
    out: list[int] = []
    for _ in range(length):
        scaled = last.float().cpu() / max(temperature, 1e-6)
        if top_k is not None and top_k < scaled.numel():
            kth = torch.topk(scaled, top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, -math.inf)
        nxt = int(torch.multinomial(F.softmax(scaled, dim=-1), 1, generator=generator))
        out.append(nxt)
        step_logits, state = model(torch.tensor([[nxt]], device=device), state)
        last = step_logits[0, -1]
    return vocab.decode(out)


def corpus_path_for(config: CharRunConfig) -> Path:
    """--corpus, else Tiny Shakespeare under the data root."""
    if config.corpus:
        return Path(config.corpus)
    return D.resolve_data_dir(config.data_dir) / "text" / "tinyshakespeare.txt"


def samples_of(model: CharLM, vocab: D.Vocabulary, config: CharRunConfig) -> list[tuple[str, str]]:
    """(prompt, continuation) for each sample prompt the vocabulary can spell; a corpus that
    spells none of them gets one sample after its first character."""
    return [
        (
            p,
            generate(
                model, vocab, p, config.sample_len, SAMPLE_TEMPERATURE, None, seed=config.seed
            ),
        )
        for p in SAMPLE_PROMPTS
        if all(c in vocab.stoi for c in p)
    ] or [
        (
            vocab.itos[0],
            generate(model, vocab, vocab.itos[0], config.sample_len, SAMPLE_TEMPERATURE),
        )
    ]


def train_charlm(config: CharRunConfig, rt: Runtime, run_dir: Path) -> RunReport:
    """Train, keep the epoch with the lowest validation loss, then sample from it."""
    corpus_path = corpus_path_for(config)
    corpus = D.Corpus.from_file(corpus_path)
    vocab = corpus.vocab
    if rt.is_main:
        tqdm.write(
            f"corpus {corpus_path}: {len(corpus.train_ids)} train / {len(corpus.val_ids)} "
            f"validation characters, vocabulary {len(vocab)}"
            + (
                f", {corpus.dropped_val_chars} unseen validation chars dropped"
                if corpus.dropped_val_chars
                else ""
            ),
            file=sys.stderr,
        )
    model_config = CharLMConfig(
        vocab_size=len(vocab),
        embed_dim=config.embed,
        hidden_size=config.hidden,
        num_layers=config.layers,
        cell=config.cell,
        dropout=config.dropout,
    )
    model = CharLM(model_config).to(rt.device)
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "kind": "charlm",
        "name": config.name,
        "config": model_config.to_dict(),
        "vocab": vocab.itos,
    }
    seq_len = config.seq_len

    def train_windows(epoch: int) -> Dataset[Any]:
        # a new phase each epoch, so the model does not always see the same window borders
        offset = (epoch * 7919 + config.seed) % seq_len
        return D.windows(corpus.train_ids, seq_len, offset)

    val_set = D.windows(corpus.val_ids, seq_len)
    result = fit(
        model, train_windows, val_set, config, rt, checkpoint, run_dir, higher_is_better=False
    )
    load_best(model, run_dir, rt)
    val_loss = result.best_val.loss
    metrics = task_metrics(
        "charlm",
        model_config.to_dict(),
        count_parameters(model),
        result,
        val={
            "split": "last 10% of the corpus"
            + (" (dry run: first batches only)" if config.dry_run else ""),
            "loss_nats_per_char": val_loss,
            "bits_per_char": val_loss / math.log(2),
            "seq_len": seq_len,
        },
        data={
            "name": corpus_path.name,
            "sha256": corpus.checksum,
            "train_chars": len(corpus.train_ids),
            "val_chars": len(corpus.val_ids),
        },
        vocab=vocab.itos,
    )
    if not rt.is_main:
        return RunReport(metrics)
    samples = samples_of(model, vocab, config)
    metrics["samples"] = [
        {"prompt": p, "text": t, "temperature": SAMPLE_TEMPERATURE} for p, t in samples
    ]
    (run_dir / "samples.txt").write_text(
        "\n\n".join(
            f"=== prompt {p!r} (temperature {SAMPLE_TEMPERATURE})\n{p}{t}" for p, t in samples
        )
    )
    plots.plot_samples(samples, run_dir / "samples.png", f"{config.name} samples")
    return RunReport(
        metrics,
        [
            f"best epoch {result.best_epoch}: val loss {val_loss:.4f} nats/char "
            f"({val_loss / math.log(2):.4f} bits/char), {result.wall_time_s:.0f}s",
            f"sample:\n{samples[0][0]}{samples[0][1][:300]}",
        ],
    )
