"""``featx finetune``: cached partial fine-tuning (the frozen bottom run once; the top blocks trained on its maps)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..options import BackboneOptions, ExtractOptions
from ..pipeline import build_source, experiment
from .base import (check_report_folder, echo, existing_file, out_option, pipeline_option, progress_renderer,
                   setting_option, source_options)

__all__ = ["finetune"]


@click.command()
@pipeline_option
@source_options("data", "root", "val_fraction", "test_fraction", "seed", "limit")
@setting_option(BackboneOptions, "name", "-b")
@setting_option(BackboneOptions, "weights", "-w")
@click.option("--blocks", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many of the trunk's last units (MobileNet/EfficientNet blocks, ResNet stages) to train; "
                   "everything below them stays frozen and runs once.")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True,
              help="Most epochs (early stopping on val top-1 after --patience epochs without a gain).")
@click.option("--patience", type=click.IntRange(min=1), default=3, show_default=True,
              help="Epochs without a better val top-1 before stopping.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="AdamW learning rate (cosine schedule to 0 over --epochs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Cached maps per training step.")
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="How the cached maps are stored (fp16 halves the file; training runs in fp32).")
@setting_option(ExtractOptions, "cache_dir")
@setting_option(ExtractOptions, "device")
@out_option("Folder for finetuned.safetensors and its card finetuned.json (default reports/finetune-<dataset>-"
            "<backbone>-<blocks>).", file=False)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar (or, in a log file, the progress lines).")
def finetune(pipeline, blocks, epochs, patience, lr, batch_size, precision, out, no_progress, name, **settings):
    """Fine-tune the top of a backbone with its bottom frozen and run once: the maps entering the last --blocks
    units are cached, then those units and a new linear layer are trained on them (AdamW, cosine schedule, early
    stopping on val, seeded). Writes finetuned.safetensors (tensors only, no pickle) and its card; featx predict
    and featx export-model take it like a head."""
    if pipeline:
        existing_file(pipeline, "pipeline file")
    exp = experiment(pipeline, name=name, **settings)
    if name and not settings.get("weights"):
        exp = dataclasses.replace(exp, backbone=dataclasses.replace(exp.backbone, weights=None))
    from ..backbones.names import parse_backbone, quick_check
    from ..cache.spec import file_stem

    if not exp.backbone.name.startswith(("timm:", "clip:")):
        quick_check(*parse_backbone(exp.backbone.name, exp.backbone.weights))
    source = build_source(exp)
    from .multilabel import single_label_only

    single_label_only(source, "featx finetune")
    bb_name = file_stem(exp.backbone.name)
    out_dir = check_report_folder(Path(out) if out else Path("reports") / f"finetune-{source.name}-{bb_name}-{blocks}",
                                  ("finetuned.safetensors", "finetuned.json"), {"the data": exp.source.data},
                                  replaces=("text", "data"))  # a card, and safetensors' binary file
    from ..backbones.registry import load_backbone
    from ..extract import check_device
    from ..finetune.run import FinetuneOptions, cut_point, finetune as run_finetune

    check_device(exp.extract.device)
    bb = load_backbone(exp.backbone.name, exp.backbone.weights, device=exp.extract.device)
    cut_point(bb.model, blocks)  # a --blocks the trunk cannot take: refused before anything is cached
    options = FinetuneOptions(blocks=blocks, epochs=epochs, lr=lr, batch_size=batch_size, patience=patience,
                              seed=exp.source.seed, precision=precision)
    card = run_finetune(bb, source, out_dir, options=options, cache_dir=exp.extract.cache_dir,
                        device=exp.extract.device, progress=progress_renderer(enabled=not no_progress))
    scores = ", ".join(f"{s} top-1 {m['top1']:.4f} ({m['n']})" for s, m in card["metrics"].items())
    sec = card["seconds"]
    echo(f"fine-tuned {bb.name} from {card['cut']} ({blocks} unit(s)) for {len(card['val_history'])} epoch(s): "
         f"{scores}; maps {sec['cache']:.1f} s, training {sec['train']:.1f} s")
    echo(f"wrote {out_dir / 'finetuned.safetensors'} and {out_dir / 'finetuned.json'}; featx predict -F "
         f"{out_dir / 'finetuned.safetensors'} IMAGES")
