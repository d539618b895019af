"""The tokenizer stage and E5-style input encoding for the two towers.

`star-jax tokenizer --data DATA_DIR --out DIR` trains a byte-level BPE (`tokenizers`) on every
node text for the tiny demo base model, which has no hub tokenizer to reuse, and saves it in
Hugging Face format (`AutoTokenizer.from_pretrained(DIR)` reloads it offline). A real run points
`tokenizer.dir` at its base model's tokenizer instead. `encode_e5` turns texts into the
bucketed, right-padded batches the towers consume, as E5-Mistral does (arXiv 2401.00368 §3.2).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from star_jax.config import TokenizerConfig, fingerprint
from star_jax.errors import StarError

log = logging.getLogger(__name__)

# ids 0..3, in this order: Mistral's <unk>, <s> (BOS, added by the post-processor) and </s> (EOS),
# plus a <pad>, which Mistral lacks.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
STAMP_FILE = (
    "star_tokenizer.json"  # digest of the texts + config fingerprint: a rerun that matches is skipped
)


class Encoded(NamedTuple):
    ids: np.ndarray  # int32 [B, T]: BOS, (instruction +) text, EOS, then padding; T a bucket or max_len
    lengths: np.ndarray  # int32 [B]: real tokens per row, EOS included; the pooled token is lengths - 1
    truncated: int  # rows whose text was cut to fit max_len
    pool: np.ndarray  # float32 [B, T]: 1 on the tokens a mean pools (the section's, else every real one)
    sections: int  # rows whose pool is their section


# -- training ------------------------------------------------------------------------------------


def _texts(data_dir: str, batch_rows: int = 4096) -> Iterator[list[str]]:
    """Every node text, in batches, streamed from the tables that have a `text` column."""
    from star_jax.data.schema import read_schema
    from star_jax.data.tables import canonical, open_table

    schema = read_schema(data_dir)
    for spec in schema.node_types.values():
        if spec.text:
            for batch in open_table(data_dir, spec.table).to_batches(columns=["text"], batch_size=batch_rows):
                yield canonical(batch.column("text"), "string").to_pylist()


def _text_rows(data_dir: str) -> tuple[int, list[str]]:
    from star_jax.data.schema import read_schema
    from star_jax.data.tables import open_table

    schema = read_schema(data_dir)
    tables = [spec.table for spec in schema.node_types.values() if spec.text]
    return sum(open_table(data_dir, t).count_rows() for t in tables), tables


def build_bpe(texts: Iterator[list[str]], cfg: TokenizerConfig, *, total: int | None = None) -> Any:
    """Train a byte-level BPE on batches of texts; returns a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=total)
    bos = SPECIAL_TOKENS[1]
    # Mistral/Llama add BOS (never EOS) to every sequence; E5 appends EOS itself (see `encode_e5`).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0",
        pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, tok.token_to_id(bos))],
    )
    return tok


def train_tokenizer(data_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: TokenizerConfig) -> Path:
    """Train the BPE on `data_dir`'s texts and save it in HF format to `out_dir` (atomically).

    Skipped when `out_dir` already holds a tokenizer trained on the same texts with the same config;
    any other non-empty directory there is refused rather than replaced.
    """
    from transformers import PreTrainedTokenizerFast

    from star_jax.fileio import atomic_dir, atomic_write_json, content_digest, read_json

    data_dir, out = os.fspath(data_dir), Path(out_dir)
    total, tables = _text_rows(data_dir)
    stamp = {
        "texts": content_digest([os.path.join(data_dir, t) for t in tables]),
        "config": fingerprint({k: v for k, v in vars(cfg).items() if k != "dir"}),
    }
    if (out / STAMP_FILE).is_file() and read_json(out / STAMP_FILE) == stamp:
        log.info(f"tokenizer: {out} is up to date; skipped")
        return out
    if out.exists() and not out.is_dir():
        raise StarError(f"--out {out}: not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / STAMP_FILE).is_file():
        raise StarError(f"--out {out}: exists and is not a tokenizer directory (no {STAMP_FILE}); "
                        "refusing to replace it")
    tok = build_bpe(_texts(data_dir), cfg, total=total)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    with atomic_dir(out) as tmp:
        fast.save_pretrained(tmp)
        atomic_write_json(tmp / STAMP_FILE, stamp)
    log.info(f"tokenizer: {tok.get_vocab_size()} tokens trained on {total:,} texts -> {out}")
    return out


# -- loading and encoding ------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike) -> Any:
    """`AutoTokenizer.from_pretrained(path)`, offline; a clear `StarError` when it cannot load."""
    from transformers import AutoTokenizer

    from star_jax.fileio import read_json

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise StarError(f"tokenizer directory not found: {path}")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        raise StarError(f"{path}: no tokenizer.json or tokenizer_config.json (not an HF tokenizer directory)")
    config = os.path.join(path, "tokenizer_config.json")
    try:
        custom = os.path.isfile(config) and "auto_map" in (read_json(config) or {})
    except (OSError, ValueError) as e:
        raise StarError(f"{config}: not valid JSON: {e}") from None
    if custom:  # transformers would run the directory's own Python code (or ask on a terminal)
        raise StarError(f"{config}: auto_map names custom tokenizer code; star-jax never runs it "
                        "(trust_remote_code is off)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # a malformed tokenizer.json fails with KeyError, TypeError, ... too
        detail = " ".join(str(e).split())
        if not isinstance(e, (OSError, ValueError)):
            detail = f"{type(e).__name__} {detail}"
        raise StarError(f"{path}: cannot load tokenizer: {detail}") from None
    if tokenizer.eos_token_id is None:
        raise StarError(f"{path}: tokenizer has no eos_token (E5 pooling needs one)")
    return tokenizer


def bucket_length(longest: int, max_len: int, buckets: Sequence[int]) -> int:
    """The padded length for a batch whose longest row has `longest` tokens.

    The smallest configured bucket that fits, or `max_len` above the largest bucket (a row never
    exceeds `max_len`); buckets at or above `max_len` are ignored.
    """
    return min([b for b in buckets if longest <= b < max_len] + [max_len])


def adds_eos(tokenizer: Any) -> bool:
    """Whether the tokenizer's post-processor already ends every sequence with EOS."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[-1] == tokenizer.eos_token_id


def encode_e5(
    tokenizer: Any,
    texts: Sequence[str],
    max_len: int,
    buckets: Sequence[int],
    instruction: str | None = None,
    *,
    where: str = "text",
    ids: Sequence[Any] | None = None,
    section: str | None = None,
) -> Encoded:
    """Tokenize `texts` as E5-Mistral does and pad them on the right to one bucket.

    Each row is BOS (from the tokenizer), the optional `instruction` followed by the text, cut to
    `max_len - 1` tokens, then EOS, padded with the pad id (EOS where the tokenizer has none, as in
    E5). If the tokenizer already appends EOS, that EOS is dropped first so there is exactly one.
    An empty text is a `StarError` naming `where` and its row (and `ids[row]` when given).

    `section`: a regex whose first group spans the part of the text a mean pools (`pool`); a row it
    does not match, or whose match was cut off, pools every real token (BOS and EOS too).
    """
    if max_len < 2:
        raise StarError(f"max_len: {max_len} leaves no room for a token before EOS")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            name = f" (id {ids[i]})" if ids is not None else ""
            raise StarError(f"{where}: row {i}{name} is empty; every text to embed must be non-empty")
    if instruction:
        texts = [instruction + t for t in texts]
    enc = tokenizer(list(texts), add_special_tokens=True, return_attention_mask=False,
                    return_offsets_mapping=section is not None)
    rows = enc["input_ids"]
    strip = 1 if adds_eos(tokenizer) else 0
    eos = tokenizer.eos_token_id
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    lengths = np.array([min(len(r) - strip, max_len - 1) + 1 for r in rows], np.int32)
    truncated = sum(len(r) - strip > max_len - 1 for r in rows)
    out = np.full((len(rows), bucket_length(int(lengths.max(initial=1)), max_len, buckets)), pad, np.int32)
    pool = (np.arange(out.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    sections = 0
    for i, (r, n) in enumerate(zip(rows, lengths)):
        out[i, : n - 1] = r[: n - 1]
        out[i, n - 1] = eos
        span = re.search(section, texts[i], flags=re.S) if section is not None else None
        if span is not None:
            starts = np.array([a for a, _ in enc["offset_mapping"][i][: n - 1]])
            inside = (starts >= span.start(1)) & (starts < span.end(1))
            if inside.any():
                pool[i] = 0
                pool[i, : n - 1] = inside
                sections += 1
    return Encoded(out, lengths, int(truncated), pool, sections)


# -- CLI -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from star_jax.config import add_config_args

    parser.add_argument("--data", default=None, help="data directory (default: the config's data.dir)")
    parser.add_argument("--out", required=True, help="output directory for the HF tokenizer")
    add_config_args(parser)


def main(args: argparse.Namespace) -> int:
    from star_jax.config import config_from_args
    from star_jax.data.validate import check_data

    cfg = config_from_args(args)
    if cfg.tokenizer.dir is not None:
        tokenizer = load_tokenizer(cfg.tokenizer.dir)
        log.info(
            f"tokenizer: using {cfg.tokenizer.dir} as configured ({len(tokenizer)} tokens); nothing trained"
        )
        return 0
    data_dir = args.data or cfg.data.dir
    if data_dir is None:
        raise StarError("--data: required (or set data.dir in the config)")
    check_data(data_dir)
    train_tokenizer(data_dir, args.out, cfg.tokenizer)
    return 0
