"""The ``pmatch`` command line."""

from __future__ import annotations

import sys

import click

from .bundles import list_bundles
from .errors import PmatchError
from .home import models_dir


def EX(example: str) -> str:  # noqa: N802 - reads as a constant in the decorators below
    """A help text's closing one-line example (``\\b``: click prints it unwrapped)."""
    return f"\b\nExample: {example}"


@click.group(epilog=EX("pmatch sql shop.duckdb -c \"SELECT * FROM match_products('feed', 'catalog')\""))
@click.version_option(package_name="pmatch-duckdb")
@click.option("--verbose", is_flag=True,
              help="Also show third-party logs and warnings (LanceDB, torch, transformers); = PMATCH_LOG=verbose.")
def main(verbose: bool) -> None:
    """pmatch: multimodal product matching inside DuckDB."""
    if verbose:
        import os

        os.environ.setdefault("PMATCH_LOG", "verbose")


@main.group(epilog=EX("pmatch models build && pmatch models list"))
def models() -> None:
    """Build and inspect encoder bundles (ONNX + manifest) under the pmatch home."""


@models.command("build", epilog=EX("pmatch models build --only minilm-l6-v2"))
@click.option("--home", type=click.Path(file_okay=False), default=None, help="pmatch home (default $PMATCH_HOME).")
@click.option("--force", is_flag=True, help="Rebuild even if an intact bundle exists (repairs a corrupt one).")
@click.option("--only", multiple=True, help="Build only this bundle (repeatable).")
@click.option("--int8", is_flag=True,
              help="Also build int8 variants (minilm-l6-v2-int8: dynamic; efficientnet-lite0-int8: static, "
                   "calibrated on generated product photos). Use them with pm.connect(text_model=..., "
                   "image_model=...); the fp32 bundles stay the default.")
def models_build(home: str | None, force: bool, only: tuple[str, ...], int8: bool) -> None:
    """Export the default encoders (MiniLM text, EfficientNet-Lite0 image) to ONNX. Needs the build extra."""
    try:
        from .build import build_defaults
    except ImportError as e:  # torch or a weight package missing
        raise click.ClickException(
            f"building models needs the build extra ({e}); install it with: pip install 'pmatch-duckdb[build]'"
        ) from None
    try:
        build_defaults(home=home, force=force, names=list(only) or None, log=click.echo, int8=int8)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None


@models.command("export-openclip", epilog=EX("pmatch models export-openclip --arch ViT-B-32 --weights ./open_clip_pytorch_model.bin --name my-clip --pretrained-tag laion2b_s34b_b79k"))
@click.option("--arch", default=None,
              help="open_clip architecture, e.g. ViT-B-32, RN50 (optional when --weights is a folder with "
                   "open_clip_config.json).")
@click.option("--weights", required=True, type=click.Path(),
              help="Local checkpoint: .safetensors, or a .bin/.pt/.pth state dict (or a folder holding one).")
@click.option("--name", required=True, help="Bundle name; SQL selects it with pm_embed_text(t, NAME).")
@click.option("--pretrained-tag", default=None,
              help="open_clip tag whose metadata (mean/std, interpolation, QuickGELU) describes these weights, "
                   "e.g. openai or laion2b_s34b_b79k. Nothing is downloaded.")
@click.option("--mean", nargs=3, type=float, default=None, help="Override the image mean (R G B).")
@click.option("--std", nargs=3, type=float, default=None, help="Override the image std (R G B).")
@click.option("--interpolation", type=click.Choice(["bicubic", "bilinear"]), default=None,
              help="Override the resize interpolation.")
@click.option("--resize-mode", type=click.Choice(["shortest", "longest", "squash"]), default=None,
              help="Override the resize mode.")
@click.option("--tokenizer", default=None, type=click.Path(),
              help="Local folder with the Hugging Face tokenizer (tokenizer.json, ...) of models that use one "
                   "(SigLIP, SigLIP2, ...), when --weights is not a snapshot folder holding it.")
@click.option("--hf-text-dir", default=None, type=click.Path(),
              help="Local Hugging Face folder (config.json + tokenizer files) of a Hugging Face text tower "
                   "(xlm-roberta-base-ViT-B-32, ...; default: the folder named like the tower, e.g. "
                   "xlm-roberta-base, inside the checkpoint's folder).")
@click.option("--force", is_flag=True, help="Replace an existing bundle of that name.")
@click.option("--home", type=click.Path(file_okay=False), default=None, help="pmatch home (default $PMATCH_HOME).")
def models_export_openclip(arch: str | None, weights: str, name: str, pretrained_tag: str | None,
                           mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                           interpolation: str | None, resize_mode: str | None, tokenizer: str | None,
                           hf_text_dir: str | None, force: bool, home: str | None) -> None:
    """Export OpenCLIP weights on disk to one CLIP bundle (text + image towers). Needs the clip extra."""
    try:
        from .build.openclip import export_openclip
    except ImportError as e:
        raise click.ClickException(
            f"exporting CLIP models needs the clip extra ({e}); install it with: pip install 'pmatch-duckdb[clip]'"
        ) from None
    pre = {"mean": list(mean) if mean else None, "std": list(std) if std else None,
           "interpolation": interpolation, "resize_mode": resize_mode}
    try:
        export_openclip(arch, weights, name, home=home, force=force, pretrained_tag=pretrained_tag,
                        preprocess=pre, tokenizer=tokenizer, hf_text_dir=hf_text_dir, log=click.echo)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None


@models.command("export-text", epilog=EX("pmatch models export-text --path ~/models/multilingual-e5-small --name my-e5 --prefix 'query: '"))
@click.option("--path", "path", required=True, type=click.Path(),
              help="Local model folder: a sentence-transformers folder (modules.json, 1_Pooling/, ...) or a plain "
                   "Hugging Face one (config.json, weights, tokenizer files). Nothing is downloaded.")
@click.option("--name", required=True, help="Bundle name; SQL selects it with pm_embed_text(t, NAME).")
@click.option("--pooling", default=None,
              help="Override the pooling: mean, cls, lasttoken, max, mean_sqrt_len_tokens, weightedmean "
                   "(default: the folder's 1_Pooling config, else mean).")
@click.option("--prefix", default=None,
              help="Text put in front of every text the model embeds, e.g. 'query: ' for E5 models "
                   "(default: the model's default prompt, else none).")
@click.option("--prompt", "prompts", multiple=True, metavar="NAME=TEXT",
              help="A named prompt recorded in the manifest beside the model's own (repeatable), e.g. "
                   "passage='passage: '.")
@click.option("--max-length", type=int, default=None,
              help="Truncate at this many tokens (default: the model's max length).")
@click.option("--force", is_flag=True, help="Replace an existing bundle of that name.")
@click.option("--home", type=click.Path(file_okay=False), default=None, help="pmatch home (default $PMATCH_HOME).")
def models_export_text(path: str, name: str, pooling: str | None, prefix: str | None, prompts: tuple[str, ...],
                       max_length: int | None, force: bool, home: str | None) -> None:
    """Export a local sentence-transformers / Hugging Face text model (BERT, XLM-R, MPNet, ...) to a text bundle.

    Then pm_embed_text(title, NAME) in SQL, or pm.connect(..., text_model=NAME) for indexing and matching.
    Matching is symmetric, so E5 models want --prefix 'query: '. Needs the build extra (torch,
    transformers); the bundle runs on onnxruntime + tokenizers only.
    """
    try:
        from .build.text_hf import export_text
    except ImportError as e:
        raise click.ClickException(
            f"exporting text models needs the build extra ({e}); install it with: pip install 'pmatch-duckdb[build]'"
        ) from None
    named = {}
    for p in prompts:
        key, sep, text = p.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{p!r}: expected NAME=TEXT", param_hint="--prompt")
        named[key] = text
    try:
        export_text(path, name, home=home, pooling=pooling, prefix=prefix, prompts=named or None,
                    max_length=max_length, force=force, log=click.echo)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None


@models.command("list", epilog=EX("pmatch models list"))
@click.option("--home", type=click.Path(file_okay=False), default=None, help="pmatch home (default $PMATCH_HOME).")
def models_list(home: str | None) -> None:
    """Show installed bundles (then trained matchers) and whether their hashes verify."""
    bundles = list_bundles(home)
    if not bundles:
        click.echo(f"no model bundles in {models_dir(home)}; build them with: pmatch models build")
        return
    click.echo(f"{'name':<24} {'modality':<8} {'dim':>5}  verified  source")
    bad = 0
    for b in bundles:
        problems = b.problems()
        bad += bool(problems)
        src = b.manifest.get("source", {})
        click.echo(f"{b.name:<24} {b.modality:<8} {b.dim:>5}  {'yes' if not problems else 'NO':<8}  "
                   f"{src.get('package') or ''} {src.get('version') or src.get('folder') or ''}")
        for p in problems:
            click.echo(f"    problem: {p}")
    _list_matchers(home)
    if bad:
        click.echo("rebuild corrupt bundles with: pmatch models build --force", err=True)
        sys.exit(1)


def _list_matchers(home: str | None) -> None:
    from .matchers import active_version, matchers_dir, versions

    root = matchers_dir(home)
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for name in names:
        active = active_version(name, home)
        for v in versions(name, home):
            try:
                from .bundles import read_bundle

                b = read_bundle(root / name / v)
                ok = not b.problems()
                th = b.manifest.get("thresholds", {})
                met = b.manifest.get("metrics", {}).get("valid", {})
                acc = th.get("accept")
                tr = b.manifest.get("training", {})
                kind = tr.get("decision_model", "logistic") + (", cross-fitted" if tr.get("cross_fit") else "")
                pm_ = b.manifest.get("pair_model")
                if pm_:  # which pair scorer re-reads the top candidates (the known kind may stand in for another)
                    instead = f", instead of {pm_['instead_of']}" if pm_.get("instead_of") else ""
                    kind += f", pair scorer {pm_.get('kind', 'cross')} (top {pm_.get('top_m', '?')}{instead})"
                click.echo(f"matcher {name} {v}{' (active)' if v == active else ''}: dim {b.dim}, decision {kind}, "
                           f"accept ≥ {f'{acc:.4f}' if acc is not None else 'none (target precision not certifiable)'}, "
                           f"review ≥ {th.get('review', 0):.4f}, valid best F1 {met.get('best_f1', float('nan')):.3f}, "
                           f"verified {'yes' if ok else 'NO'}, created {b.manifest.get('created', '?')}")
            except PmatchError as e:
                click.echo(f"matcher {name} {v}: unreadable ({e})")


@models.command("activate", epilog=EX("pmatch models activate default v1"))
@click.argument("name")
@click.argument("version")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def models_activate(name: str, version: str, home: str | None) -> None:
    """Make VERSION (e.g. v2) of matcher NAME the active one (indexes re-project on their next use)."""
    from .matchers import activate

    try:
        activate(name, version, home)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"matcher {name}: {version} active")


@models.command("rollback", epilog=EX("pmatch models rollback default"))
@click.argument("name")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def models_rollback(name: str, home: str | None) -> None:
    """Re-activate the previously active version of matcher NAME (or zero-shot if there was none)."""
    from .matchers import rollback

    try:
        v = rollback(name, home)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"matcher {name}: {v or 'zero-shot (no trained version active)'}")


_TEXT_MODEL_KEY = "pmatch.text_model"


def _remember_text_model(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_TEXT_MODEL_KEY] = value


# --text-model NAME on the commands that open a connection (read by _open): the text encoder bundle for
# indexing, matching and training instead of minilm-l6-v2 (an index records its encoders and refuses others)
text_model_option = click.option(
    "--text-model", default=None, expose_value=False, callback=_remember_text_model,
    help="Text encoder bundle (default minilm-l6-v2), e.g. one made by `pmatch models export-text`.")


@main.command("train", epilog=EX("pmatch train shop.duckdb --offers feed --offers catalog --pairs labels"))
@text_model_option
@click.argument("database", type=click.Path(dir_okay=False))
@click.option("--offers", multiple=True, required=True, help="Offer table; give two for source and target.")
@click.option("--pairs", default=None, help="Labels table: left_id, right_id[, label].")
@click.option("--group-column", default=None, help="Or: a column of the offer tables naming each offer's product.")
@click.option("--valid-pairs", default=None, help="Validation labels (default: 20% of label groups).")
@click.option("--valid-split", type=click.Choice(["auto", "groups", "offers", "latest"]), default="auto",
              show_default=True,
              help="Without --valid-pairs, validate on the pairs of 20% of the label groups, or of a random 20% of "
                   "the offers, or (--pairs pm_labels) of the offers reviewed last; the last two keep products "
                   "that are also in training, which the known-products stage needs. auto: offers for review "
                   "verdicts with enough matches for the pair stage, else groups.")
@click.option("--name", default="default", show_default=True, help="Matcher name.")
@click.option("--dim", default=256, show_default=True, help="Output dimension of the projection.")
@click.option("--epochs", default=None, type=int, help="Default: about 300 optimiser steps.")
@click.option("--batch-size", default=1024, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--target-precision", default=0.99, show_default=True, help="For the accept threshold.")
@click.option("--decision-model", type=click.Choice(["logistic", "gbdt", "auto"]), default="logistic",
              show_default=True, help="Logistic regression, boosted trees, or the better by held-out AP.")
@click.option("--no-cross-fit", is_flag=True, help="Train the decision model on in-sample projection features.")
@click.option("--mine-negatives", default=0, show_default=True,
              help="Per training offer, this many best zero-shot non-matches as hard negatives for the projection.")
@click.option("--no-token-diff", is_flag=True,
              help="Skip the word-difference model (a decision feature learnt from which title words differ).")
@click.option("--source-margins", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Decision features comparing each pair with its source's other candidates (auto: on for two "
                   "tables, off for dedup of one).")
@click.option("--no-pair-model", is_flag=True,
              help="Skip the pair scorer (cross-encoder or siamese; trained by default with >= --pair-min-matches matches).")
@click.option("--pair-recipe", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Pair scorer: fine-tuning recipe. cpu: 4 of 6 layers frozen, max length 64, 3 epochs (minutes on "
                   "2 cores); gpu: every layer, max length 256, augmentation, up to 16 epochs; auto: gpu where "
                   "--pair-device resolves to a CUDA GPU. The --pair-* options below override the recipe.")
@click.option("--pair-kind", type=click.Choice(["cross", "siamese", "known"]), default="cross", show_default=True,
              help="Pair scorer: cross (a cross-encoder reading both offers, one pass per pair), siamese (MiniLM "
                   "fine-tuned contrastively on the match groups, one pass per offer; every layer, 12 epochs on "
                   "the cpu recipe; better on WDC Products, slower to train) or known (no transformer: whether both "
                   "offers resolve to the same labelled product by stage 1's vectors; seconds to train). A cross or "
                   "siamese scorer the gate drops falls back to known where that passes the gate.")
@click.option("--pair-base", default=None, type=click.Path(file_okay=False),
              help="Siamese pair scorer: fine-tune this local model folder (sentence-transformers or Hugging Face; "
                   "BERT, RoBERTa, XLM-R, MPNet, DistilBERT; local files only) instead of the packaged MiniLM-L6. "
                   "A bigger encoder reads more but trains slower. The cpu recipe freezes the lower half of its "
                   "layers and runs them once: on 2 CPU cores a 110 M-parameter, 12-layer one took 46 minutes for "
                   "the recipe's 12 epochs on WDC Products' 1,500 training offers (about 100 through every layer); "
                   "a GPU takes minutes (--pair-device cuda).")
@click.option("--no-pair-known-products", is_flag=True,
              help="Do not keep the labelled training offers in the bundle (known products: whether a pair's offers "
                   "resolve to the same labelled product, stacked with the pair score), and no fallback to the "
                   "known kind.")
@click.option("--pair-max-len", default=None, type=int, help="Pair scorer: word pieces per pair (cpu recipe 64, gpu 256).")
@click.option("--pair-epochs", default=None, type=int, help="Pair scorer: fine-tuning epochs (cpu recipe 3, gpu 16).")
@click.option("--pair-freeze-layers", default=None, type=click.IntRange(0),
              help="Pair scorer: frozen lower layers and the embeddings, run once per pair (cross) or offer "
                   "(siamese) and their output stored, so each epoch runs only the layers above (cross cpu recipe "
                   "4 of MiniLM's 6, gpu 0; siamese 0, from a --pair-base half its layers on the cpu recipe).")
@click.option("--pair-device", default="auto", show_default=True,
              help="Pair scorer: where torch fine-tunes it (auto: a CUDA GPU when torch sees one; cpu, cuda, cuda:N).")
@click.option("--pair-patience", default=None, type=click.IntRange(0),
              help="Pair scorer: stop after this many epochs without a validation gain (0: run every epoch; cpu "
                   "recipe 2, gpu 5); the best epoch's model is kept.")
@click.option("--pair-hard-negatives", default=None, type=click.IntRange(0),
              help="Pair scorer: mined hard negatives per labelled source (default: 2; 0 for labelled pairs of one "
                   "table, whose unlabelled candidates are often the same product).")
@click.option("--pair-top-m", default=3, show_default=True, help="Pair scorer: candidates per source it re-reads.")
@click.option("--pair-min-matches", default=None, type=click.IntRange(0),
              help="Labelled training matches needed before the pair stage is tried (default: 400; 200 for "
                   "--pair-kind siamese).")
@click.option("--pair-min-gain", default=0.005, show_default=True,
              help="Keep the pair scorer only if it raises held-out average precision by this much (-1: always).")
@click.option("--pair-max-train-pairs", default=None, type=click.IntRange(0),
              help="Pair scorer: fine-tune on at most this many pairs (after non-match sampling; whole label groups; "
                   "siamese: offers, whole match groups; 0: all; cpu recipe 3000, gpu all).")
@click.option("--pair-max-valid-pairs", default=3000, show_default=True, type=click.IntRange(0),
              help="Pair scorer: stack and calibrate on at most this many validation pairs (0: all).")
@click.option("--no-activate", is_flag=True, help="Save the new version without activating it.")
@click.option("--image-root", "image_roots", multiple=True, help="Allowed image folder (repeatable).")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def train_cmd(database: str, offers: tuple[str, ...], pairs: str | None, group_column: str | None,
              valid_pairs: str | None, valid_split: str, name: str, dim: int, epochs: int | None, batch_size: int, seed: int,
              target_precision: float, decision_model: str, no_cross_fit: bool, mine_negatives: int,
              no_token_diff: bool, source_margins: str, no_pair_model: bool, pair_recipe: str, pair_kind: str,
              pair_base: str | None, no_pair_known_products: bool, pair_max_len: int | None,
              pair_epochs: int | None, pair_freeze_layers: int | None, pair_device: str, pair_patience: int | None,
              pair_hard_negatives: int | None, pair_top_m: int, pair_min_matches: int | None, pair_min_gain: float,
              pair_max_train_pairs: int | None, pair_max_valid_pairs: int,
              no_activate: bool, image_roots: tuple[str, ...], home: str | None) -> None:
    """Train a matcher (projection + decision model) from labels in DATABASE. Needs the train extra."""
    import json

    try:
        from .training import train_matcher
        from .training.pair_model import PairOptions
    except ImportError as e:
        raise click.ClickException(f"training needs the train extra ({e}): pip install 'pmatch-duckdb[train]'") from None
    try:
        # the recipe's knobs, with the ones given on the command line taking precedence
        given = {"max_len": pair_max_len, "epochs": pair_epochs, "freeze_layers": pair_freeze_layers}
        train_knobs = {k: v for k, v in given.items() if v is not None} | {"seed": seed, "kind": pair_kind,
                                                                           "known_products": not no_pair_known_products}
        if pair_patience is not None:
            train_knobs["patience"] = pair_patience or None
        if pair_base is not None:
            if pair_kind != "siamese" or no_pair_model:
                raise click.BadParameter("fine-tunes the siamese pair scorer: give it with --pair-kind siamese",
                                         param_hint="--pair-base")
            from .training.pair_base import PairBaseError, read_pair_base

            try:  # before stage 1 trains for minutes: a wrong folder fails now
                read_pair_base(pair_base)
            except PairBaseError as e:
                raise click.BadParameter(str(e), param_hint="--pair-base") from None
            train_knobs["base"] = pair_base
        caps = {} if pair_max_train_pairs is None else {"max_train_pairs": pair_max_train_pairs or None}
        popts = PairOptions.from_recipe(pair_recipe, pair_device, train=train_knobs, top_m=pair_top_m,
                                        min_positives=pair_min_matches, hard_negatives=pair_hard_negatives,
                                        min_gain=pair_min_gain, max_valid_pairs=pair_max_valid_pairs or None, **caps)
    except ValueError as e:  # e.g. --pair-device cuda where torch sees no GPU
        raise click.BadParameter(str(e), param_hint="--pair-device") from None
    try:
        con = _open(database, home, image_roots, name)
        r = train_matcher(con, list(offers), pairs=pairs, group_column=group_column, valid_pairs=valid_pairs,
                          valid_split=valid_split,
                          name=name, dim=dim, epochs=epochs, batch_size=batch_size, seed=seed,
                          target_precision=target_precision, decision_model=decision_model,
                          cross_fit=not no_cross_fit, mine_negatives=mine_negatives, activate=not no_activate,
                          token_diff=not no_token_diff, pair_model=not no_pair_model,
                          source_margins={"auto": None, "on": True, "off": False}[source_margins],
                          pair_options=popts,
                          log=click.echo)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(r.metrics, indent=1, default=float))


@main.command("evaluate", epilog=EX("pmatch evaluate shop.duckdb --source feed --target catalog --pairs test_labels --out report/"))
@text_model_option
@click.argument("database", type=click.Path(dir_okay=False))
@click.option("--source", required=True, help="Source offer table.")
@click.option("--target", required=True, help="Target offer table.")
@click.option("--pairs", required=True, help="Labels: left_id (source), right_id (target)[, label].")
@click.option("-k", "k", default=10, show_default=True)
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Write metrics.json, plots, report.html here.")
@click.option("--matcher", default=None, help="Trained matcher name (its active version; default 'default').")
@click.option("--image-root", "image_roots", multiple=True, help="Allowed image folder (repeatable).")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def evaluate_cmd(database: str, source: str, target: str, pairs: str, k: int, out: str | None, matcher: str | None,
                 image_roots: tuple[str, ...], home: str | None) -> None:
    """Recall@k, precision/recall/F1 at the thresholds, best F1, recall at precision 0.99/0.95, review band."""
    import json

    import duckdb

    from .evaluation import evaluate

    try:
        con = _open(database, home, image_roots, matcher)
        m = evaluate(con, source, target, pairs, k=k, out_dir=out)
    except (PmatchError, duckdb.Error, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(m, indent=1, default=float))


def _open(db: str, home: str | None, image_roots: tuple[str, ...], matcher: str | None = None):
    from .connection import connect
    from .matchers import matcher_dir

    if matcher:
        matcher_dir(matcher, home)  # a name that cannot be a matcher folder is refused here, by name
    extra = {"matcher": matcher} if matcher else {}
    ctx = click.get_current_context(silent=True)
    text_model = ctx.meta.get(_TEXT_MODEL_KEY) if ctx is not None else None
    if text_model:  # --text-model: e.g. a multilingual model exported with `pmatch models export-text`
        extra["text_model"] = text_model
    return connect(db, home=home, image_roots=list(image_roots) or None, **extra)


RAY_OPTION = click.option(
    "--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
    help="Run on Ray: a cluster ADDRESS (HOST:PORT or ray://HOST:10001), or a local Ray instance when omitted. "
         "Needs the ray extra.")
RAY_WORKERS_OPTION = click.option("--workers", type=int, default=None,
                                  help="With --ray: encoder/scoring actors (default: one per cluster CPU).")


@main.command("index", epilog=EX("pmatch index shop.duckdb catalog --image-root ./images"))
@text_model_option
@click.argument("database", type=click.Path(dir_okay=False))
@click.argument("table")
@click.option("--name", default=None, help="Index name (default: the table's name).")
@click.option("--rebuild", is_flag=True, help="Re-embed everything (e.g. after changing encoders).")
@click.option("--image-root", "image_roots", multiple=True, help="Allowed image folder (repeatable; default: cwd).")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
@RAY_OPTION
@RAY_WORKERS_OPTION
def index_cmd(database: str, table: str, name: str | None, rebuild: bool, image_roots: tuple[str, ...],
              home: str | None, ray_address: str | None, workers: int | None) -> None:
    """Build or incrementally refresh the LanceDB index of an offer TABLE in DATABASE.

    With --ray the offers are embedded on a Ray cluster (the same index is written)."""
    from .api import index

    try:
        con = _open(database, home, image_roots)
        if ray_address is not None:
            from .distributed.cli import index_on_ray

            stats = index_on_ray(con, table, name=name, rebuild=rebuild, address=ray_address, workers=workers)
        else:
            stats = index(con, table, name=name, rebuild=rebuild)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(" ".join(f"{k}={v}" for k, v in stats.as_row().items()))


@main.command("match", epilog=EX("pmatch match shop.duckdb feed catalog -k 5 --into matches"))
@text_model_option
@click.argument("database", type=click.Path(dir_okay=False))
@click.argument("source")
@click.argument("target")
@click.option("-k", "k", default=10, show_default=True, help="Candidates per source offer.")
@click.option("--into", default=None, help="Save the result as this table instead of printing it.")
@click.option("--matcher", default=None, help="Trained matcher name (its active version; default 'default').")
@click.option("--image-root", "image_roots", multiple=True, help="Allowed image folder (repeatable; default: cwd).")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
@RAY_OPTION
@RAY_WORKERS_OPTION
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="With --ray: write the candidates to this Parquet file (default: SOURCE_matches.parquet).")
@click.option("--lexical-shards", type=click.IntRange(min=0), default=None,
              help="With --ray: split the target's char TF-IDF across this many actors (0: every scoring actor "
                   "holds all of it; default: 0 below 100k target rows, else one shard per 250k rows).")
def match_cmd(database: str, source: str, target: str, k: int, into: str | None, matcher: str | None,
              image_roots: tuple[str, ...], home: str | None, ray_address: str | None, workers: int | None,
              out_path: str | None, lexical_shards: int | None) -> None:
    """Match SOURCE offers against the TARGET index (match_products).

    With --ray the source is scored on a Ray cluster; the candidates go to a Parquet file (and to --into)."""
    import duckdb

    if lexical_shards is not None and ray_address is None:
        raise click.UsageError("--lexical-shards needs --ray (match_products holds the target's TF-IDF in-process)")

    from .api import match
    from .sqlident import quote_qualified

    try:
        con = _open(database, home, image_roots, matcher)
        if ray_address is not None:
            from .distributed.cli import match_on_ray

            res = match_on_ray(con, source, target, k=k, out=out_path, into=into, address=ray_address,
                               workers=workers, lexical_shards=lexical_shards)
            click.echo(f"{res.rows} candidate pairs written to {res.path}"
                       + (f" and saved in {into}" if into else f"; load them with: {res.load_sql()}"))
        elif into:
            con.execute(
                f"CREATE OR REPLACE TABLE {quote_qualified(into)} AS SELECT * FROM match_products(?, ?, k := ?)",
                [source, target, k])
            n = con.execute(f"SELECT count(*) FROM {quote_qualified(into)}").fetchall()[0][0]
            click.echo(f"{n} candidate pairs saved in {into}")
        else:
            click.echo(str(match(con, source, target, k=k)))
    except (PmatchError, duckdb.Error) as e:
        raise click.ClickException(str(e)) from None


@main.command("sql", epilog=EX("pmatch sql shop.duckdb -c \"SELECT * FROM match_products('feed', 'catalog', k := 3)\" --format csv"))
@text_model_option
@click.argument("database", required=False, default=":memory:")
@click.option("-c", "--command", "commands", multiple=True,
              help="Run these statements (repeatable; ';'-separated), print the results and exit.")
@click.option("-f", "--file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Run a SQL file (repeatable) and exit.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "jsonl"]), default="table",
              show_default=True, help="Output format (interactively: .mode FORMAT).")
@click.option("--history", type=click.Path(dir_okay=False), default=None,
              help="History file of the prompt (default: sql_history in the pmatch home).")
@click.option("--matcher", default=None, help="Trained matcher name (its active version; default 'default').")
@click.option("--image-root", "image_roots", multiple=True, help="Allowed image folder (repeatable; default: cwd).")
@click.option("--home", default=None, help="pmatch home (default $PMATCH_HOME).")
def sql_cmd(database: str, commands: tuple[str, ...], files: tuple[str, ...], fmt: str, history: str | None,
            matcher: str | None, image_roots: tuple[str, ...], home: str | None) -> None:
    """SQL on DATABASE with every pmatch function registered: a prompt (history, multi-line statements
    ending in ';', .help lists the pmatch functions), or -c / -f / piped statements for scripts and cron jobs.
    Scripts stop at the first failing statement with exit status 1.
    """
    from pathlib import Path

    import duckdb

    from .home import pmatch_home
    from .shell import Shell, ShellError, interactive, run_script

    try:
        con = _open(database, home, image_roots, matcher)
    except (PmatchError, duckdb.Error) as e:
        raise click.ClickException(str(e)) from None
    scripted = bool(commands or files) or not sys.stdin.isatty()
    if scripted or not sys.stdout.isatty():
        # DuckDB draws its progress bar on stdout after 2 s: it would corrupt csv/json output of scripts
        con.execute("SET enable_progress_bar = false")
    shell = Shell(con, fmt=fmt, width=None if sys.stdout.isatty() else 100_000)
    try:
        if not scripted:
            hist = Path(history) if history else pmatch_home(home) / "sql_history"
            interactive(shell, hist, banner=f"pmatch sql on {database}: statements end with ';', "
                                            ".help lists the pmatch functions, .quit leaves")
            return
        for c in commands:
            run_script(shell, c)
        for f in files:
            run_script(shell, Path(f).read_text())
        if not commands and not files:
            run_script(shell, sys.stdin.read())
    except ShellError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    finally:
        con.close()


@main.command("demo", epilog=EX("pmatch demo --out demo_out --products 60"))
@click.option("--out", type=click.Path(file_okay=False), default="demo_out", show_default=True,
              help="Folder for the generated catalog, images and DuckDB file.")
@click.option("--products", default=60, show_default=True, help="Number of generated catalog products.")
@click.option("--seed", default=0, show_default=True)
def demo(out: str, products: int, seed: int) -> None:
    """Run the main job end to end on a generated catalog and supplier feed."""
    from .demo.run import run_demo

    try:
        run_demo(out, n_products=products, seed=seed, echo=click.echo)
    except PmatchError as e:
        raise click.ClickException(str(e)) from None


from .review.commands import calibrate_cmd, review_cmd  # noqa: E402 - the human-review commands live with review/

review_cmd.epilog = EX("pmatch review shop.duckdb --matches feed_matches")
calibrate_cmd.epilog = EX("pmatch calibrate shop.duckdb --target catalog --dry-run")
main.add_command(review_cmd)
main.add_command(calibrate_cmd)

if __name__ == "__main__":  # pragma: no cover
    main()
