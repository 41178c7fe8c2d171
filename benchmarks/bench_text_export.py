"""Time ``pmatch models export-text`` on a base-size model: XLM-RoBERTa base's config with random weights.

No multilingual weights can be downloaded here, so the model is ``XLMRobertaConfig()`` (xlm-roberta-base:
250,002-token vocabulary, 768 wide, 12 layers, 514 positions; the architecture of paraphrase-multilingual-
mpnet-base-v2, multilingual-e5-base and bge-m3's backbone) randomly initialised, saved as a
sentence-transformers folder (mean pooling, Normalize, max_seq_length 512) with a small Unigram tokenizer
trained here (real XLM-R tokenizer.json files are 17 MB; the graph size does not depend on it). Prints the
export time (including the ONNX-vs-torch and tokenizer checks), the bundle's file sizes, peak memory, and
the run-time embedding speed of the bundle in SQL.

    .venv/bin/python benchmarks/bench_text_export.py [--workdir /tmp/bench_text_export] [--layers 12]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="Scratch folder (default: a temporary one, removed after).")
    ap.add_argument("--layers", type=int, default=12)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_text_export_"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = ["red cotton dress", "rotes Baumwollkleid", "Ключ гаечный 13 мм", "無印良品 ステンレス マグ",
              "เสื้อยืดผ้าฝ้าย สีแดง", "فستان قطني أحمر", "kaos katun merah", "sukienka bawełniana"] * 20
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                            unk_token="<unk>"))
    vocab = [(p, s) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
    hf_tok = transformers.XLMRobertaTokenizer(vocab=vocab, model_max_length=512)
    # FacebookAI/xlm-roberta-base's config.json (XLMRobertaConfig's own defaults are BERT's: 30522 tokens)
    cfg = transformers.XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                                        num_hidden_layers=args.layers)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = transformers.XLMRobertaModel(cfg, add_pooling_layer=False).eval()
    hf = work / "xlmr-base-hf"
    model.save_pretrained(hf)
    hf_tok.save_pretrained(hf)
    del model
    st = work / "xlmr-base-st"
    shutil.copytree(hf, st, dirs_exist_ok=True)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (st / "1_Pooling").mkdir(exist_ok=True)
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 768, "pooling_mode": "mean"}))
    (st / "2_Normalize").mkdir(exist_ok=True)
    (st / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))
    print(f"random xlm-roberta-base ({args.layers} layers) saved in {time.perf_counter() - t0:.1f} s: {st}")

    from pmatch_duckdb.build.text_hf import export_text

    home = work / "home"
    t0 = time.perf_counter()
    path = export_text(st, "xlmr-base", home=home, force=True, log=lambda m: print(f"  [{time.perf_counter() - t0:6.1f} s] {m}"))
    export_s = time.perf_counter() - t0
    manifest = json.loads((path / "manifest.json").read_text())
    print(f"export: {export_s:.1f} s (ONNX vs torch max diff {manifest['exporter']['check']['max_abs_diff']:.1e}), "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    for f in sorted(path.iterdir()):
        print(f"  {f.name:<16} {f.stat().st_size / 1e6:10.1f} MB")
    weights = hf / "model.safetensors"
    print(f"  (source model.safetensors {weights.stat().st_size / 1e6:.1f} MB)")

    import pmatch_duckdb as pm

    con = pm.connect(home=home, image_roots=[work])
    titles = [f"{c} {t} Größe {i}" for i, (c, t) in enumerate(zip(corpus, corpus[3:] + corpus[:3], strict=True))]
    con.execute("SELECT pm_embed_text('warm-up', 'xlmr-base')").fetchall()
    t0 = time.perf_counter()
    con.execute("SELECT count(pm_embed_text(t, 'xlmr-base')) FROM unnest(?) AS u(t)", [titles]).fetchall()
    s = time.perf_counter() - t0
    print(f"run time: {len(titles)} short titles in {s:.2f} s ({len(titles) / s:.0f} titles/s, onnxruntime)")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
