"""Token shards and `headway prepare`: exact round trip on real files (non-ASCII included), every
input format, weighted mixtures, incremental rebuilds, corrupt shards refused by name."""

import gzip
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from headway.data.prepare import Settings, open_prepared, prepare, sample_units
from headway.data.shards import ShardError
from headway.data.sources import is_validation, read, resolve
from headway.data.tokenizer import load_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _real_files(dst: Path, n: int = 30) -> Path:
    """n real standard-library files, at least a third of them with non-ASCII characters."""
    dst.mkdir(parents=True, exist_ok=True)
    picked, non_ascii = 0, 0
    for p in sorted(STDLIB.rglob("*.py")):
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        wide = any(ord(c) > 0x7F for c in t)
        if len(t) > 60_000 or (not wide and non_ascii < n // 3 and picked >= n - n // 3):
            continue
        (dst / p.relative_to(STDLIB).as_posix().replace("/", "__")).write_text(t, encoding="utf-8")
        picked += 1
        non_ascii += wide
        if picked == n:
            break
    assert non_ascii >= n // 3
    return dst


def _quiet(*_a):
    pass


def _all_docs(p, split: str) -> list[np.ndarray]:
    return [s.doc(i) for s in (p.train if split == "train" else p.val) for i in range(len(s))]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return _real_files(tmp_path_factory.mktemp("src") / "code")


@pytest.mark.parametrize("tokenizer", ["bpe", "bytes"])
@pytest.mark.parametrize("workers", [1, 2])
def test_shards_round_trip_to_exactly_the_tokens_of_direct_encoding(files, tmp_path, tokenizer, workers):
    s = Settings(tokenizer=tokenizer, vocab_size=600, val_fraction=0.2)
    p = prepare([str(files)], tmp_path / "prep", s, workers=workers, log=_quiet, progress=False)
    tok = load_tokenizer(tmp_path / "prep")
    want = {"train": [], "val": []}
    nbytes = {"train": 0, "val": 0}
    for u in resolve([str(files)])[0].units:
        for d in read(u):
            split = "val" if is_validation(d.name, 0.2) else "train"
            want[split].append(np.asarray(tok.encode(d.text)))
            nbytes[split] += d.num_bytes
    for split in ("train", "val"):
        got = _all_docs(p, split)
        assert len(got) == len(want[split]) > 0
        assert all(np.array_equal(g, w) for g, w in zip(got, want[split]))
        assert p.totals(split)["bytes"] == nbytes[split]
        assert "".join(tok.decode(g.tolist()) for g in got).encode() != b""
    assert p.manifest["dtype"] == "uint16"
    assert all(s.pieces[0].tokens.dtype == np.uint16 for s in p.train)


def test_unchanged_inputs_are_not_redone_and_an_edited_file_redoes_its_piece_only(files, tmp_path, monkeypatch):
    monkeypatch.setattr("headway.data.prepare.TASK_BYTES", 50_000)  # many tasks on these small files
    src = tmp_path / "code"
    shutil.copytree(files, src)
    folder = tmp_path / "prep"
    s = Settings(tokenizer="bytes", val_fraction=0.2)
    logs: list[str] = []
    prepare([str(src)], folder, s, workers=2, log=logs.append, progress=False)
    assert any("tokenizing" in x for x in logs)
    before = {f.name: f.stat().st_mtime_ns for f in (folder / "pieces").iterdir()}
    logs.clear()
    prepare([str(src)], folder, s, workers=2, log=logs.append, progress=False)
    assert not any("tokenizing" in x for x in logs)  # nothing redone
    assert {f.name: f.stat().st_mtime_ns for f in (folder / "pieces").iterdir()} == before
    # an edit of equal size: detected by content
    victim = sorted(src.iterdir())[-1]
    text = victim.read_text()
    edited = text.replace("a", "b", 1) if "a" in text else text.replace(text[0], "x", 1)
    assert len(edited.encode()) == len(text.encode()) and edited != text
    victim.write_text(edited)
    logs.clear()
    p = prepare([str(src)], folder, s, workers=2, log=logs.append, progress=False)
    assert any("tokenizing" in x and "reused" in x for x in logs)
    after = {f.name: f.stat().st_mtime_ns for f in (folder / "pieces").iterdir()}
    assert 0 < len(set(after) - set(before)) <= 4  # one task's train+val files
    assert len(set(before) & set(after)) >= len(before) - 4
    all_text = "".join(bytes(d.tolist()).decode() for d in _all_docs(p, "train") + _all_docs(p, "val"))
    assert edited in all_text and text not in all_text


def test_adding_files_never_moves_a_document_between_splits(files, tmp_path):
    src = tmp_path / "code"
    shutil.copytree(files, src)
    s = Settings(tokenizer="bytes", val_fraction=0.3)
    a = prepare([str(src)], tmp_path / "a", s, workers=1, log=_quiet, progress=False)
    val_before = sorted(bytes(d.tolist()) for d in _all_docs(a, "val"))
    for i in range(12):
        (src / f"zz_new_{i}.py").write_text(f"x = {i}\n")
    b = prepare([str(src)], tmp_path / "a", s, workers=1, log=_quiet, progress=False)
    val_after = sorted(bytes(d.tolist()) for d in _all_docs(b, "val"))
    new_val = [f"x = {i}\n".encode() for i in range(12) if is_validation(f"code/zz_new_{i}.py", 0.3)]
    assert sorted(val_before + new_val) == val_after


def test_bpe_is_trained_on_a_bounded_sample(files):
    units = resolve([str(files)])[0].units
    total = sum(u.size for u in units)
    sample = sample_units(resolve([str(files)]), total // 4)
    assert 0 < sum(u.size for u in sample) < total // 4 + max(u.size for u in units)
    assert [u.name for u in sample] != [u.name for u in units[: len(sample)]]  # spread, not the first files


@pytest.mark.parametrize("damage", ["truncate", "garble", "delete", "manifest"])
def test_a_corrupt_or_truncated_shard_or_manifest_is_refused_by_name(files, tmp_path, damage):
    folder = tmp_path / "prep"
    prepare([str(files)], folder, Settings(tokenizer="bytes"), workers=1, log=_quiet, progress=False)
    victim = max((folder / "pieces").glob("*.train.bin"), key=lambda f: f.stat().st_size)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-7])
    elif damage == "garble":
        b = bytearray(victim.read_bytes())
        b[len(b) // 2] ^= 0xFF
        victim.write_bytes(bytes(b))
    elif damage == "delete":
        victim.unlink()
    else:
        victim = folder / "manifest.json"
        victim.write_text(victim.read_text()[:100])
    with pytest.raises(ShardError, match=victim.name):
        open_prepared(folder)
    r = subprocess.run([sys.executable, "-m", "headway", "train", "--data", str(folder), "--out", str(tmp_path / "o"),
                        "--steps", "2", "--seq-len", "32", "--batch-size", "2"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and victim.name in r.stderr and "Traceback" not in r.stderr


def _write_formats(d: Path) -> dict[str, list[str]]:
    """One small file per format; returns the texts each holds."""
    texts = ["déjà vu 🙂\n", "x = 1\n", "print('日本語')\n"]
    d.mkdir()
    (d / "a.txt").write_text(texts[0])
    rows = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts))
    (d / "b.jsonl").write_text(rows)
    (d / "c.jsonl.gz").write_bytes(gzip.compress(rows.encode()))
    import zstandard

    (d / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(rows.encode()))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts, "n": [1, 2, 3]}), d / "e.parquet")
    return {"a.txt": texts[:1], "b.jsonl": texts, "c.jsonl.gz": texts, "d.jsonl.zst": texts, "e.parquet": texts}


def test_every_input_format_is_read(tmp_path):
    want = _write_formats(tmp_path / "in")
    for u in resolve([str(tmp_path / "in")])[0].units:
        assert [d.text for d in read(u)] == want[Path(u.path).name], u.path
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": want["b.jsonl"]}).save_to_disk(str(tmp_path / "hf"))
    (src,) = resolve([str(tmp_path / "hf")])
    assert [d.text for u in src.units for d in read(u)] == want["b.jsonl"]
    p = prepare([str(tmp_path / "in"), str(tmp_path / "hf")], tmp_path / "prep", Settings(tokenizer="bytes",
                val_fraction=0.3), workers=2, log=_quiet, progress=False)
    got = sorted(bytes(d.tolist()).decode() for d in _all_docs(p, "train") + _all_docs(p, "val"))
    assert got == sorted([t for v in want.values() for t in v] + want["b.jsonl"])


def test_glob_picks_the_files_of_a_folder(tmp_path):
    _write_formats(tmp_path / "in")
    (src,) = resolve([str(tmp_path / "in")], glob="*.jsonl*")
    assert sorted(Path(u.path).name for u in src.units) == ["b.jsonl", "c.jsonl.gz", "d.jsonl.zst"]
    with pytest.raises(ValueError, match="--glob"):
        resolve([str(tmp_path / "in")], glob="*.rs")


@pytest.mark.parametrize("content, where", [
    ('{"text": "ok"}\n{"body": "no text field"}\n', ":2: no string field 'text'"),
    ('{"text": "ok"}\n{"text": "ok"}\n{broken\n', ":3: not valid JSON"),
    ('"a bare string"\n', ":1: expected a JSON object"),
])
def test_a_bad_jsonl_line_names_the_file_and_line(tmp_path, content, where):
    f = tmp_path / "rows.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError, match="rows.jsonl" + where):
        list(read(resolve([str(f)])[0].units[0]))
    r = subprocess.run([sys.executable, "-m", "headway", "prepare", "--data", str(f), "--out", str(tmp_path / "p"),
                        "--tokenizer", "bytes", "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "rows.jsonl:" + where.split(":")[1] in r.stderr and "Traceback" not in r.stderr


def test_parquet_without_the_text_column_is_refused_by_name(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="t.parquet: no column 'text'.*--text-field"):
        list(read(resolve([str(tmp_path / "t.parquet")])[0].units[0]))


@pytest.mark.parametrize("spec, message", [
    ("{d}:0", "weight"), ("{d}:-1", "weight"), ("{d}:nan", "weight"), ("/no/such/dir", "neither a file nor"),
])
def test_bad_data_specs_get_clear_errors(files, spec, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        resolve([spec.format(d=files)])


def test_a_weighted_mixture_draws_documents_by_weight(tmp_path):
    from headway.data.loader import ShardStream, StreamSpec
    from headway.objectives import build_objective
    from headway.types import Vocab

    for name, ch in (("a", "A"), ("b", "B")):
        (tmp_path / name).mkdir()
        for i in range(20):
            (tmp_path / name / f"{i}.txt").write_text(ch * 30)
    p = prepare([f"{tmp_path / 'a'}:0.7", f"{tmp_path / 'b'}:0.3"], tmp_path / "prep", Settings(tokenizer="bytes",
                val_fraction=0.1), workers=1, log=_quiet, progress=False)
    assert p.weights == [0.7, 0.3]
    vocab = Vocab(256)
    stream = ShardStream(p.train, p.weights, build_objective("clm", vocab), StreamSpec(64, 4, "bfd", 0, vocab.pad))
    pos = [0, 0]
    draws = [s for s, _ in (next(d) for d in [stream.documents(0, pos, np.random.default_rng(1))] * 4000)]
    assert abs(np.mean(np.asarray(draws) == 0) - 0.7) < 0.03
    batch, _, _ = next(iter(stream))
    ids = batch.input_ids[batch.input_ids < 256]
    assert set(ids.tolist()) <= {ord("A"), ord("B")}
