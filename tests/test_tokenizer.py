"""The tokenizer stage (BPE in HF format, offline reload) and E5 encoding."""

from __future__ import annotations

import os

import numpy as np
import pytest
from data_fixtures import write_tiny_data
from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from star_jax import cli
from star_jax.data.tokenizer import STAMP_FILE, bucket_length, encode_e5, load_tokenizer
from star_jax.errors import StarError

VOCAB = 320
TEXTS = ["senior python engineer in london", "nurse, tokyo", "data analyst with sql and spark"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    data = write_tiny_data(root / "data")
    out = root / "tokenizer"
    assert (
        cli.main(
            ["tokenizer", "--data", str(data), "--out", str(out), "--set", f"tokenizer.vocab_size={VOCAB}"]
        )
        == 0
    )
    return data, out


@pytest.fixture(scope="module")
def tok(trained):
    return load_tokenizer(trained[1])


def test_saved_in_hf_format_and_reloads_offline(trained):
    _, out = trained
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    hf = AutoTokenizer.from_pretrained(out)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))  # the tokenizers library itself, no HF wrapper
    assert hf.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<pad>"]
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 2, 3, 0)
    assert len(hf) == VOCAB
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        assert ids == raw.encode(text).ids
        assert ids[0] == 1 and ids.count(1) == 1 and 2 not in ids  # BOS from the post-processor, no EOS
        assert hf.decode(ids, skip_special_tokens=True) == text


def test_rerun_is_skipped_and_config_change_retrains(trained, capsys, tmp_path):
    data, out = trained
    mtime = (out / "tokenizer.json").stat().st_mtime_ns
    args = ["tokenizer", "--data", str(data), "--out", str(out), "--set", f"tokenizer.vocab_size={VOCAB}"]
    assert cli.main(args) == 0
    assert "up to date" in capsys.readouterr().err
    assert (out / "tokenizer.json").stat().st_mtime_ns == mtime
    other = tmp_path / "tok2"
    assert (
        cli.main(["tokenizer", "--data", str(data), "--out", str(other), "--set", "tokenizer.vocab_size=300"])
        == 0
    )
    assert len(load_tokenizer(other)) == 300 and (other / STAMP_FILE).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["tokenizer", "--out", str(tmp_path / "t")]) == 2
    assert "--data" in capsys.readouterr().err
    with pytest.raises(StarError, match="not found"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StarError, match="not an HF tokenizer"):
        load_tokenizer(tmp_path / "empty")


def test_encode_e5_layout(tok):
    instruction = "Instruct: match\nQuery: "
    plain = encode_e5(tok, TEXTS, 64, [8, 16, 32])
    query = encode_e5(tok, TEXTS, 64, [8, 16, 32], instruction)
    for enc, prefix in ((plain, ""), (query, instruction)):
        assert enc.ids.dtype == np.int32 and enc.lengths.dtype == np.int32 and enc.truncated == 0
        for row, n, text in zip(enc.ids, enc.lengths, TEXTS):
            expected = tok(prefix + text)["input_ids"]  # HF tokenizer as the oracle: BOS + tokens
            assert n == len(expected) + 1
            assert row[: n - 1].tolist() == expected
            assert row[n - 1] == tok.eos_token_id
            assert (row[n:] == tok.pad_token_id).all()
            assert tok.decode(row[1 : n - 1]) == prefix + text
    assert tok.decode(plain.ids[0][1 : plain.lengths[0] - 1]).startswith(TEXTS[0])
    # The padded width is the smallest bucket that holds the longest row.
    assert plain.ids.shape[1] == bucket_length(int(plain.lengths.max()), 64, [8, 16, 32])
    assert plain.ids.shape[1] >= plain.lengths.max() and plain.ids.shape[1] in (8, 16, 32)


def test_truncation_counts_rows_and_keeps_eos(tok):
    long = " ".join(["kubernetes"] * 40)
    enc = encode_e5(tok, [long, "sql", long], 12, [4, 8])
    assert enc.truncated == 2
    assert enc.ids.shape == (3, 12)  # longer than the largest bucket: padded to max_len
    assert enc.lengths.tolist()[0] == 12 and enc.lengths[2] == 12
    assert enc.ids[0, :11].tolist() == tok(long)["input_ids"][:11]
    assert enc.ids[0, 11] == tok.eos_token_id
    assert enc.lengths[1] == len(tok("sql")["input_ids"]) + 1


def test_pool_marks_the_section_and_falls_back_to_the_whole_text(tok):
    texts = ["senior python engineer\nSkills\nsql and spark", "nurse, tokyo", "data analyst\nSkills\nexcel"]
    section = r"\nSkills\n(.*)$"
    enc = encode_e5(tok, texts, 64, [8, 16, 32], "Query: ", section=section)
    whole = encode_e5(tok, texts, 64, [8, 16, 32], "Query: ")
    assert enc.ids.tolist() == whole.ids.tolist() and enc.lengths.tolist() == whole.lengths.tolist()
    assert enc.pool.dtype == np.float32 and enc.pool.shape == enc.ids.shape
    # Without a section every real token is pooled, BOS and EOS too.
    assert (whole.pool == (np.arange(whole.ids.shape[1])[None] < whole.lengths[:, None])).all()
    # The HF tokenizer as the oracle: the pooled tokens decode to the section's text.
    for row, pool, text in zip(enc.ids, enc.pool, texts):
        if "Skills" in text:
            assert tok.decode(row[pool > 0]).strip() == text.split("Skills\n")[1]
    assert (enc.pool[1] == whole.pool[1]).all()  # no match: the whole text
    # A section cut off by max_len pools the whole (kept) text.
    cut = encode_e5(tok, [texts[0]], 6, [8], section=section)
    assert cut.truncated == 1 and cut.pool[0].tolist() == [1.0] * 6


def test_bucket_choice():
    assert bucket_length(5, 256, [64, 128, 256]) == 64
    assert bucket_length(64, 256, [64, 128, 256]) == 64
    assert bucket_length(65, 256, [64, 128, 256]) == 128
    assert bucket_length(200, 256, [64, 128]) == 256  # above the largest bucket: max_len
    assert bucket_length(100, 96, [64, 128]) == 96  # never past max_len


def test_empty_text_is_an_error_naming_the_row(tok):
    with pytest.raises(StarError, match=r"nodes/job.parquet: text: row 1 \(id 42\) is empty"):
        encode_e5(tok, ["fine", "   "], 16, [8], where="nodes/job.parquet: text", ids=[7, 42])


def test_pad_falls_back_to_eos_and_eos_is_not_doubled(trained):
    # E5-Mistral's tokenizer pads with EOS; some tokenizers append EOS themselves.
    raw = Tokenizer.from_file(str(trained[1] / "tokenizer.json"))
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tok.pad_token_id is None
    enc = encode_e5(tok, ["sql", "data analyst"], 16, [16])
    for row, n in zip(enc.ids, enc.lengths):
        assert row[n - 1] == 2 and (row[: n - 1] != 2).all() and (row[n:] == 2).all()
