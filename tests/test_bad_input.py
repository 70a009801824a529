"""Bad input, everywhere it enters (issue 10).

One row per (entry point, malformed input): ``sew manifest``, ``sew labels``, ``sew infer``, the
training tasks' dataset loader (``sew_audio_pretraining`` / ``sew_audio_finetuning``) and configs.
Each bad input must give an error naming the file and line (or the config key), or a documented,
counted skip; never a traceback from deep inside torch or fairseq, never a silently lost utterance.
Real files throughout, written with soundfile; the training loader also through the real
``fairseq-hydra-train``.
"""

import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import TINY_PRETRAINING, hydra_train, write_manifest, write_wav_corpus
from helpers import finetuning_task, pretraining_task
from sew_plugin.cli import main as sew
from sew_plugin.data.audio import audio_frames
from sew_plugin.data.errors import DataError, DataErrors, read_lines
from sew_plugin.data.labels import read_transcripts
from sew_plugin.data.manifest import read_manifest

SEW = str(Path(sys.executable).with_name("sew"))


# ---------------------------------------------------------------- malformed audio files


def _samples(n, channels=1, seed=0):
    rng = np.random.default_rng(seed + n)
    return (0.1 * rng.standard_normal((n, channels) if channels > 1 else n)).astype(np.float32)


def _write(path: Path, n: int, rate=16000, channels=1, fmt=None, subtype=None, data=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _samples(n, channels) if data is None else data, rate, format=fmt, subtype=subtype)
    return path


def _cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _with(value, n=4000):
    data = _samples(n)
    data[n // 2] = value
    return data


# kind -> (writer(folder) -> (file, samples its manifest row claims), message, level)
# level "header": found from the header (manifest, labels, infer, training loader before training);
# level "samples": found when the samples are decoded (manifest, infer and training as they read).
BAD_AUDIO = {
    "missing": (lambda d: (d / "bad.wav", 4000), "audio file not found", "header"),
    "corrupt_wav": (lambda d: (_garbage(d / "bad.wav", b"RIFF\x10\x00\x00\x00WAVEjunk" * 9), 4000),
                    "unreadable audio", "header"),
    "corrupt_flac": (lambda d: (_garbage(d / "bad.flac", b"fLaC" + bytes(range(256)) * 4), 4000),
                     "unreadable audio", "header"),
    "truncated_wav": (lambda d: (_cut_in_half(_write(d / "bad.wav", 8000)), 3989), "truncated", "header"),
    "truncated_flac": (lambda d: (_cut_in_half(_write(d / "bad.flac", 16000, fmt="FLAC")), 16000),
                       "truncated or corrupt", "samples"),
    "rate_8k": (lambda d: (_write(d / "bad.wav", 4000, rate=8000), 4000), "sample rate 8000 Hz, expected 16000 Hz", "header"),
    "stereo": (lambda d: (_write(d / "bad.wav", 4000, channels=2), 4000), "2 channels, expected mono", "header"),
    "zero_length": (lambda d: (_write(d / "bad.wav", 0), 1), "zero-length audio", "header"),
    "shorter_than_receptive_field": (lambda d: (_write(d / "bad.wav", 399), 399),
                                     "shorter than the feature extractor's receptive field (400 samples)", "header"),
    "nan_samples": (lambda d: (_write(d / "bad.wav", 4000, subtype="FLOAT", data=_with(np.nan)), 4000),
                    "NaN or infinite samples", "samples"),
    "inf_samples": (lambda d: (_write(d / "bad.wav", 4000, subtype="FLOAT", data=_with(np.inf)), 4000),
                    "NaN or infinite samples", "samples"),
}


def manifest_with_bad_row(tmp_path: Path, kind: str, split="valid"):
    """``<split>.tsv`` (root, a good row on line 2, the bad file on line 3), two label lines and a
    letter dictionary beside it. Returns (manifest, bad file, message, level)."""
    audio = tmp_path / "audio"
    _write(audio / "good.wav", 4000)
    writer, message, level = BAD_AUDIO[kind]
    bad, frames = writer(audio)
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_manifest(data / f"{split}.tsv", audio, [("good.wav", 4000), (bad.name, frames)])
    (data / f"{split}.ltr").write_text("H I |\nH I | H I |\n")
    (data / "dict.ltr.txt").write_text("| 3\nH 3\nI 3\n")
    return data / f"{split}.tsv", bad, message, level


@pytest.mark.parametrize("kind", sorted(BAD_AUDIO))
def test_sew_manifest_refuses_bad_audio_by_file(tmp_path, capsys, kind):
    audio = tmp_path / "audio"
    _write(audio / "good.wav", 4000)
    writer, message, _ = BAD_AUDIO[kind]
    bad, _ = writer(audio)
    ext = "flac" if bad.suffix == ".flac" else "wav"
    if ext == "flac":
        _write(audio / "good.flac", 4000, fmt="FLAC")
    if kind == "missing":  # for `sew manifest` a missing input is the folder itself
        audio, bad, message = tmp_path / "nowhere", tmp_path / "nowhere", "audio directory not found"
    assert sew(["manifest", str(audio), "--dest", str(tmp_path / "d"), "--ext", ext]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sew manifest: error: ") and "Traceback" not in err
    assert f"{bad}: " in err and message in err, err
    assert not (tmp_path / "d" / "train.tsv").exists()


def test_sew_manifest_skip_bad_counts_and_lists_every_bad_file(tmp_path, capsys):
    audio = tmp_path / "audio"
    for name in ("g1", "g2", "g3"):
        _write(audio / f"{name}.wav", 4000)
    kinds = [k for k in BAD_AUDIO if k not in ("missing", "corrupt_flac", "truncated_flac")]
    for kind in kinds:
        BAD_AUDIO[kind][0](audio / kind)
    argv = ["manifest", str(audio), "--dest", str(tmp_path / "d"), "--skip-bad", "--valid-percent", "0.34"]
    assert sew(argv) == 0
    captured = capsys.readouterr()
    assert f"{len(kinds) + 3} audio files found; written: train 2, valid 1; skipped: {len(kinds)}" in captured.out
    assert captured.err.count("skipped ") == len(kinds)
    skipped = (tmp_path / "d" / "train.skipped_audio.tsv").read_text().splitlines()  # named after --split
    assert sorted(Path(line.split("\t")[0]).parent.name for line in skipped) == sorted(kinds)


def test_sew_manifest_header_only_defers_sample_checks_to_reading(tmp_path, capsys):
    audio = tmp_path / "audio"
    BAD_AUDIO["nan_samples"][0](audio)
    assert sew(["manifest", str(audio), "--dest", str(tmp_path / "d"), "--header-only"]) == 0
    assert read_manifest(tmp_path / "d" / "train.tsv").entries == [("bad.wav", 4000)]


def test_sew_manifest_finds_upper_case_extensions(tmp_path):
    _write(tmp_path / "audio" / "a.WAV", 4000)
    _write(tmp_path / "audio" / "b.wav", 4000)
    assert sew(["manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "d")]) == 0
    assert [p for p, _ in read_manifest(tmp_path / "d" / "train.tsv").entries] == ["a.WAV", "b.wav"]


def test_sew_manifest_refuses_a_file_name_that_would_break_the_manifest(tmp_path, capsys):
    _write(tmp_path / "audio" / "a\tb.wav", 4000)
    assert sew(["manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "d")]) == 2
    assert "a tab or line break in the file name" in capsys.readouterr().err


HEADER_KINDS = sorted(k for k, v in BAD_AUDIO.items() if v[2] == "header")
SAMPLE_KINDS = sorted(k for k, v in BAD_AUDIO.items() if v[2] == "samples")


@pytest.mark.parametrize("kind", HEADER_KINDS)
def test_sew_labels_refuses_bad_audio_by_manifest_line(tmp_path, capsys, kind):
    manifest, bad, message, _ = manifest_with_bad_row(tmp_path, kind, split="train")
    (tmp_path / "t.txt").write_text("good HI\nbad HI HI\n")
    assert sew(["labels", str(manifest), str(tmp_path / "t.txt"), "--dest", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sew labels: error: ") and "Traceback" not in err
    assert f"{manifest}:3: {bad}: " in err and message in err, err


def test_sew_labels_skip_bad_leaves_the_bad_audio_out_counted(tmp_path, capsys):
    manifest, bad, _, _ = manifest_with_bad_row(tmp_path, "stereo", split="train")
    (tmp_path / "t.txt").write_text("good HI\nbad HI HI\n")
    out_dir = tmp_path / "out"
    assert sew(["labels", str(manifest), str(tmp_path / "t.txt"), "--dest", str(out_dir), "--skip-bad"]) == 0
    assert "2 utterances in, 1 labelled out, 1 skipped" in capsys.readouterr().out
    assert [p for p, _ in read_manifest(out_dir / "train.tsv").entries] == ["good.wav"]
    assert "2 channels" in (out_dir / "train.skipped.tsv").read_text()


@pytest.mark.parametrize("kind", HEADER_KINDS)
def test_sew_infer_refuses_bad_audio_before_loading_the_model(tmp_path, capsys, kind):
    manifest, bad, message, _ = manifest_with_bad_row(tmp_path, kind)
    assert sew(["infer", str(tmp_path / "no_checkpoint.pt"), str(manifest)]) == 2  # checkpoint never opened
    err = capsys.readouterr().err
    assert err.startswith("sew infer: error: 1 bad manifest rows") and "Traceback" not in err
    assert f"{manifest}:3: {bad}: " in err and message in err, err


@pytest.mark.parametrize("kind", SAMPLE_KINDS)
def test_sew_infer_refuses_bad_samples_before_the_model_sees_them(tmp_path, kind):
    from sew_plugin.inference.transcribe import check_inputs, load_batch

    manifest_path, bad, message, _ = manifest_with_bad_row(tmp_path, kind)
    manifest, refs = check_inputs(manifest_path, "ltr")  # the header is fine
    assert len(refs) == 2
    assert len(load_batch(manifest, [0])) == 1
    with pytest.raises(DataError) as info:
        load_batch(manifest, [0, 1])
    assert info.value.where == f"{manifest_path}:3" and str(bad) in info.value.message and message in info.value.message


def test_sew_infer_refuses_an_unreadable_checkpoint_by_name(tmp_path, capsys):
    manifest, _, _, _ = manifest_with_bad_row(tmp_path, "stereo")
    write_manifest(manifest, tmp_path / "audio", [("good.wav", 4000)])
    (manifest.with_suffix(".ltr")).write_text("H I |\n")
    for name, content in (("garbage.pt", b"not a checkpoint"), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(content)
        assert sew(["infer", str(tmp_path / name), str(manifest)]) == 2  # sew_plugin.checkpoint refuses it
        err = capsys.readouterr().err
        assert err.startswith(f"sew infer: error: {tmp_path / name}: ") and "Traceback" not in err, err


# ---------------------------------------------------------------- malformed text: manifests, transcripts, labels


MANIFEST_CASES = {
    # name -> (manifest text (ROOT: the audio folder), line named, message)
    "not_utf8": (b"ROOT\ngood.wav\t4000\nb\xe9d.wav\t4000\n", 3, "not UTF-8 text (byte 0xe9)"),
    "space_not_tab": (b"ROOT\ngood.wav\t4000\ngood.wav 4000\n", 3, "expected 'relative/path<TAB>num_samples', got 1 column"),
    "three_columns": (b"ROOT\ngood.wav\t4000\textra\n", 2, "got 3 column(s)"),
    "size_not_a_number": (b"ROOT\ngood.wav\tfour\n", 2, "number of samples 'four' is not an integer"),
    "size_disagrees_with_file": (b"ROOT\ngood.wav\t4001\n", 2, "good.wav has 4000 samples, the manifest says 4001"),
    "empty_row": (b"ROOT\ngood.wav\t4000\n\n", 3, "empty line"),
    "root_missing": (b"ROOT/nowhere\ngood.wav\t4000\n", 1, "(the first line) not found"),
    "empty_file": (b"", 1, "empty manifest"),
    "no_rows": (b"ROOT\n", None, "manifest has no utterances"),
}


def write_case(tmp_path: Path, case: str) -> Path:
    audio = tmp_path / "audio"
    _write(audio / "good.wav", 4000)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    text = MANIFEST_CASES[case][0].replace(b"ROOT", str(audio).encode())
    (data / "valid.tsv").write_bytes(text)
    rows = max(text.count(b"\n") - 1, 0)
    (data / "valid.ltr").write_text("H I |\n" * rows)
    (data / "dict.ltr.txt").write_text("| 3\nH 3\nI 3\n")
    return data / "valid.tsv"


def _where(manifest: Path, line):
    return f"{manifest}:{line}: " if line else f"{manifest}: "


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
@pytest.mark.parametrize("command", ["labels", "infer"])
def test_malformed_manifests_name_file_and_line(tmp_path, capsys, command, case):
    manifest = write_case(tmp_path, case)
    _, line, message = MANIFEST_CASES[case]
    (tmp_path / "t.txt").write_text("good HI\n")
    argv = {"labels": ["labels", str(manifest), str(tmp_path / "t.txt"), "--dest", str(tmp_path / "out")],
            "infer": ["infer", str(tmp_path / "none.pt"), str(manifest)]}[command]
    assert sew(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sew {command}: error: ") and "Traceback" not in err
    assert _where(manifest, line) in err and message in err, err


def test_missing_manifest_is_named(tmp_path, capsys):
    for argv in (["labels", str(tmp_path / "x.tsv"), str(tmp_path), "--dest", str(tmp_path / "o")],
                 ["infer", str(tmp_path / "none.pt"), str(tmp_path / "x.tsv")]):
        assert sew(argv) == 2
        assert f"{tmp_path / 'x.tsv'}: manifest not found" in capsys.readouterr().err


@pytest.fixture
def three_utterances(tmp_path):
    for name in ("u1", "u2", "u3"):
        _write(tmp_path / "audio" / f"{name}.wav", 2000)
    assert sew(["manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "data")]) == 0
    return tmp_path / "data" / "train.tsv"


TRANSCRIPT_CASES = {
    # name -> (transcript bytes, dictionary bytes or None, where ("T": transcript, "M": manifest), line, message)
    "missing_line": (b"u1 A B\nu3 C\n", None, "M", 3, "no transcript for utterance u2"),
    "not_utf8": (b"u1 A\nu2 \xff\nu3 C\n", None, "T", 2, "not UTF-8 text (byte 0xff)"),
    "outside_dictionary": (b"u1 AB\nu2 BA\nu3 AXE\n", b"| 3\nA 3\nB 2\n", "T", 3, "characters ['E', 'X'] of u3 are not in"),
    "dictionary_not_utf8": (b"u1 A\nu2 A\nu3 A\n", b"| 3\n\xc3 3\n", "D", 2, "not UTF-8 text"),
    "dictionary_repeats_a_symbol": (b"u1 A\nu2 A\nu3 A\n", b"| 3\nA 3\nA 1\n", "D", 3, "symbol 'A' is already on line 2"),
    "dictionary_missing": (b"u1 A\nu2 A\nu3 A\n", None, "D", None, "dictionary not found"),
}


@pytest.mark.parametrize("case", sorted(TRANSCRIPT_CASES))
def test_sew_labels_bad_transcripts_name_file_and_line(tmp_path, capsys, three_utterances, case):
    text, dictionary, where, line, message = TRANSCRIPT_CASES[case]
    (tmp_path / "t.txt").write_bytes(text)
    argv = ["labels", str(three_utterances), str(tmp_path / "t.txt"), "--dest", str(tmp_path / "out")]
    if dictionary is not None or case == "dictionary_missing":
        if dictionary is not None:
            (tmp_path / "dict.txt").write_bytes(dictionary)
        argv += ["--dict", str(tmp_path / "dict.txt")]
    assert sew(argv) == 2
    err = capsys.readouterr().err
    path = {"T": tmp_path / "t.txt", "M": three_utterances, "D": tmp_path / "dict.txt"}[where]
    assert err.startswith("sew labels: error: ") and "Traceback" not in err
    assert _where(path, line) in err and message in err, err
    assert not (tmp_path / "out" / "train.ltr").exists()


def test_sew_labels_aligns_transcripts_given_out_of_order(tmp_path, three_utterances):
    (tmp_path / "t.txt").write_text("u3 C\nu1 A\nu2 B\n")
    assert sew(["labels", str(three_utterances), str(tmp_path / "t.txt"), "--dest", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data" / "train.wrd").read_text() == "A\nB\nC\n"  # manifest order


@pytest.mark.parametrize("command", ["lexicon", "lm"])
def test_non_utf8_word_lists_name_file_and_line(tmp_path, capsys, command):
    (tmp_path / "a.wrd").write_bytes(b"THE CAT\nTHE D\xf6G\n")
    assert sew([command, str(tmp_path / "a.wrd"), "--dest", str(tmp_path / "out.txt")]) == 2
    assert f"{tmp_path / 'a.wrd'}:2: not UTF-8 text (byte 0xf6)" in capsys.readouterr().err


def test_sew_infer_reference_labels_must_match_the_manifest(tmp_path, capsys):
    manifest = write_case(tmp_path, "size_disagrees_with_file")
    write_manifest(manifest, tmp_path / "audio", [("good.wav", 4000)])
    manifest.with_suffix(".ltr").write_bytes(b"H I |\nH I |\n")
    assert sew(["infer", str(tmp_path / "none.pt"), str(manifest)]) == 2
    assert f"{manifest.with_suffix('.ltr')}: 2 label lines for 1 manifest entries" in capsys.readouterr().err
    manifest.with_suffix(".ltr").write_bytes(b"H \x80 |\n")
    assert sew(["infer", str(tmp_path / "none.pt"), str(manifest)]) == 2
    assert f"{manifest.with_suffix('.ltr')}:1: not UTF-8" in capsys.readouterr().err


# ---------------------------------------------------------------- absurd command-line values


@pytest.mark.parametrize("argv, message", [
    (["manifest", "A", "--dest", "D", "--sample-rate", "0"], "argument --sample-rate: must be >= 1, got 0"),
    (["manifest", "A", "--dest", "D", "--valid-percent", "150"], "--valid-percent 150: a fraction in [0, 1), as in fairseq"),
    (["manifest", "A", "--dest", "D", "--valid-percent", "2"], "--valid-percent 2: a fraction in [0, 1), as in fairseq (for 2% write 0.02)"),
    (["manifest", "A", "--dest", "D", "--valid-percent", "nan"], "argument --valid-percent: must be >= 0.0 and finite"),
    (["labels", "M", "T", "--dest", "D", "--sample-rate", "-16000"], "argument --sample-rate: must be >= 1"),
    (["lm", "T", "--dest", "D", "--order", "1"], "argument --order: must be >= 2, got 1"),
    (["infer", "C", "M", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["infer", "C", "M", "--beam", "-3"], "argument --beam: must be >= 1, got -3"),
    (["infer", "C", "M", "--max-tokens", "x"], "argument --max-tokens: must be an integer, got 'x'"),
    (["sweep", "C", "M", "--threads", "-1"], "argument --threads: must be >= 0, got -1"),
])
def test_absurd_options_stop_at_the_command_line(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        sew(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path):
    """The installed ``sew`` script, for one bad input of two data commands."""
    manifest, bad, _, _ = manifest_with_bad_row(tmp_path, "rate_8k")
    (tmp_path / "t.txt").write_bytes(b"good H\xffI\n")
    runs = {
        "infer": ([SEW, "infer", str(tmp_path / "none.pt"), str(manifest)], f"{manifest}:3: {bad}: sample rate 8000 Hz"),
        "labels": ([SEW, "labels", str(manifest), str(tmp_path / "t.txt"), "--dest", str(tmp_path / "o")],
                   f"{tmp_path / 't.txt'}:1: not UTF-8 text (byte 0xff)"),
    }
    for command, (argv, message) in runs.items():
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith(f"sew {command}: error: ") and "Traceback" not in run.stderr
        assert message in run.stderr, run.stderr


# ---------------------------------------------------------------- hypothesis: no input escapes as another exception


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_as_a_manifest_parse_or_name_the_problem(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.tsv"
        path.write_bytes(data)
        try:
            manifest = read_manifest(path)
        except DataError as err:
            assert err.where.startswith(str(path))
            return
        assert all("\t" not in p and n > 0 for p, n in manifest.entries)
        errors = []
        assert read_manifest(path, errors).entries == manifest.entries and not errors


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([b"RIFF", b"fLaC", b"OggS", b""]), st.binary(max_size=200), st.sampled_from(["wav", "flac"]))
def test_any_bytes_as_audio_are_read_or_refused_by_name(magic, data, ext):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x.{ext}"
        path.write_bytes(magic + data)
        try:
            assert audio_frames(path) >= 400
        except DataError as err:
            assert err.where == str(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200), st.booleans())
def test_any_text_as_transcripts_is_read_or_refused_by_line(text, tsv):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("t.tsv" if tsv else "t.txt")
        path.write_text(text, encoding="utf-8")
        try:
            texts = read_transcripts([path])
        except DataError as err:
            assert err.where.startswith(f"{path}:") or err.where == str(path)
            return
        lines = read_lines(path)
        assert len(texts) <= len(lines)
        assert all(1 <= t.line <= len(lines) for t in texts.values())


# ---------------------------------------------------------------- the training tasks' dataset loader


@pytest.mark.parametrize("finetuning", [False, True], ids=["pretraining", "finetuning"])
@pytest.mark.parametrize("kind", HEADER_KINDS)
def test_training_loader_refuses_bad_audio_by_manifest_line(tmp_path, kind, finetuning):
    manifest, bad, message, _ = manifest_with_bad_row(tmp_path, kind)
    task = (finetuning_task if finetuning else pretraining_task)(manifest.parent)
    with pytest.raises(DataErrors) as info:
        task.load_dataset("valid")
    assert [e.where for e in info.value.errors] == [f"{manifest}:3"]
    assert str(bad) in str(info.value) and message in str(info.value)
    assert "valid" not in task.datasets


@pytest.mark.parametrize("case", sorted(set(MANIFEST_CASES)))
def test_training_loader_refuses_malformed_manifests_by_line(tmp_path, case):
    manifest = write_case(tmp_path, case)
    _, line, message = MANIFEST_CASES[case]
    with pytest.raises((DataError, DataErrors)) as info:
        pretraining_task(manifest.parent).load_dataset("valid")
    assert _where(manifest, line) in str(info.value) and message in str(info.value)


def test_training_loader_reports_every_bad_row_at_once(tmp_path):
    manifest, _, _, _ = manifest_with_bad_row(tmp_path, "rate_8k")
    audio = tmp_path / "audio"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines + ["ghost.wav\t4000", "good.wav\t3999", "good.wav 4000"]) + "\n")
    with pytest.raises(DataErrors) as info:
        pretraining_task(manifest.parent).load_dataset("valid")
    assert [e.line for e in info.value.errors] == [3, 4, 5, 6]
    assert f"{audio / 'ghost.wav'}: audio file not found" in str(info.value)


@pytest.mark.parametrize("kind", SAMPLE_KINDS)
def test_training_loader_refuses_bad_samples_as_they_are_read(tmp_path, monkeypatch, kind):
    import fairseq.data.audio.raw_audio_dataset as raw

    monkeypatch.setattr(raw.time, "sleep", lambda s: None)  # fairseq retries a failed read three times
    manifest, bad, message, _ = manifest_with_bad_row(tmp_path, kind)
    task = finetuning_task(manifest.parent)
    task.load_dataset("valid")  # headers are fine
    dataset = task.datasets["valid"]
    assert dataset[0]["source"].shape == (4000,)
    with pytest.raises(DataError) as info:
        dataset[1]
    assert info.value.where == f"{manifest}:3" and str(bad) in info.value.message and message in info.value.message


LABEL_CASES = {
    # name -> (label file bytes, dictionary bytes, file named ("L": labels, "D": dictionary), line, message)
    "fewer_lines": (b"H I |\n", b"| 3\nH 3\nI 3\n", "L", 2, "1 label lines for the 2 rows of"),
    "more_lines": (b"H I |\nH I |\nI |\n", b"| 3\nH 3\nI 3\n", "L", 3, "3 label lines for the 2 rows of"),
    "outside_dictionary": (b"H I |\nH X | Y |\n", b"| 3\nH 3\nI 3\n", "L", 2, "symbols ['X', 'Y'] are not in the target dictionary"),
    "empty_line": (b"H I |\n\n", b"| 3\nH 3\nI 3\n", "L", 2, "empty label line for manifest line 3"),
    "not_utf8": (b"H I |\nH \xe9 |\n", b"| 3\nH 3\nI 3\n", "L", 2, "not UTF-8 text (byte 0xe9)"),
    "dictionary_not_utf8": (b"H I |\nH I |\n", b"| 3\n\xe9 3\n", "D", 2, "not UTF-8 text"),
    "dictionary_repeats_a_symbol": (b"H I |\nH I |\n", b"| 3\nH 3\nH 3\n", "D", None, "not a fairseq dictionary (Duplicate word"),
    "dictionary_missing": (b"H I |\nH I |\n", None, "D", None, "dictionary not found"),
    # fairseq keeps a byte-order mark as part of the first symbol: <unk> in a label, a new symbol in the dictionary
    "labels_start_with_a_bom": ("\ufeffH I |\nH I |\n".encode(), b"| 3\nH 3\nI 3\n", "L", 1, "byte-order mark"),
    "dictionary_starts_with_a_bom": (b"H I |\nH I |\n", "\ufeff| 3\nH 3\nI 3\n".encode(), "D", 1, "byte-order mark"),
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_finetuning_loader_refuses_bad_labels_by_line(tmp_path, case):
    manifest = write_case(tmp_path, "size_disagrees_with_file")
    write_manifest(manifest, tmp_path / "audio", [("good.wav", 4000), ("good.wav", 4000)])
    labels, dictionary, which, line, message = LABEL_CASES[case]
    manifest.with_suffix(".ltr").write_bytes(labels)
    dict_path = manifest.parent / "dict.ltr.txt"
    dict_path.unlink()
    if dictionary is not None:
        dict_path.write_bytes(dictionary)
    with pytest.raises((DataError, DataErrors)) as info:
        finetuning_task(manifest.parent).load_dataset("valid")
    path = {"L": manifest.with_suffix(".ltr"), "D": dict_path}[which]
    assert _where(path, line) in str(info.value) and message in str(info.value), str(info.value)


def test_training_loader_counts_what_min_and_max_sample_size_leave_out(tmp_path, caplog):
    rows = write_wav_corpus(tmp_path / "audio", [3000, 9000, 12000, 30000])
    write_manifest(tmp_path / "valid.tsv", tmp_path / "audio", rows)
    task = pretraining_task(tmp_path, min_sample_size=8000, max_sample_size=20000)
    with caplog.at_level(logging.INFO, logger="sew_plugin.tasks.audio"):
        task.load_dataset("valid")
    assert len(task.datasets["valid"]) == 3
    log = caplog.text
    assert f"valid: 3 of 4 utterances loaded from {tmp_path / 'valid.tsv'}" in log
    assert "valid: 1 of 4 utterances left out: shorter than task.min_sample_size=8000 samples (lower task.min_sample_size" in log
    assert "valid: 1 utterances longer than task.max_sample_size=20000 samples are cropped" in log


def test_finetuning_loader_aligns_labels_with_the_rows_min_sample_size_keeps(tmp_path, caplog):
    rows = write_wav_corpus(tmp_path / "audio", [3000, 9000, 12000])
    write_manifest(tmp_path / "valid.tsv", tmp_path / "audio", rows)
    (tmp_path / "valid.ltr").write_text("H |\nI |\n" + "H I | " * 15 + "\n")
    (tmp_path / "dict.ltr.txt").write_text("| 3\nH 3\nI 3\n")
    task = finetuning_task(tmp_path, min_sample_size=5000)
    with caplog.at_level(logging.INFO, logger="sew_plugin.tasks.audio"):
        task.load_dataset("valid")
    dataset = task.datasets["valid"]
    assert len(dataset) == 2
    assert task.target_dictionary.string(dataset[0]["label"]) == "I |"  # row 2: the row-1 label was left out with it
    # 12000 samples give 37 frames; 45 symbols with repeats cannot be aligned by CTC
    assert "1 of 2 utterances have more label symbols than 20 ms frames" in caplog.text
    assert f"{tmp_path / 'valid.ltr'}:3" in caplog.text


ABSURD_TASK_KEYS = [
    (dict(sample_rate=0), "task.sample_rate must be a positive number"),
    (dict(min_sample_size=-1), "task.min_sample_size must be >= 0"),
    (dict(min_sample_size=32000, max_sample_size=16000), "task.max_sample_size=16000 is smaller than task.min_sample_size=32000"),
    (dict(max_sample_size=100), "task.max_sample_size=100 is below the feature extractor's receptive field"),
    (dict(num_batch_buckets=-2), "task.num_batch_buckets must be >= 0"),
    (dict(subsample=0.0), "task.subsample must be in (0, 1]"),
]


@pytest.mark.parametrize("finetuning, cfg, message", [
    *[(False, cfg, message) for cfg, message in ABSURD_TASK_KEYS],
    *[(True, cfg, message) for cfg, message in ABSURD_TASK_KEYS],
    (True, dict(labels=None), "task.labels must name the label files' extension"),
])
def test_absurd_task_keys_are_refused_by_name(tmp_path, cfg, message, finetuning):
    with pytest.raises(ValueError, match=re.escape(message)):
        (finetuning_task if finetuning else pretraining_task)(tmp_path, **cfg)


# ---------------------------------------------------------------- the same through the real fairseq-hydra-train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rows = write_wav_corpus(root / "wav", [16000 + 2500 * i for i in range(10)])
    rows = [(f"wav/{p}", n) for p, n in rows]
    _write(root / "wav" / "narrowband.wav", 16000, rate=8000)
    write_manifest(root / "train.tsv", root, rows[:8])
    return root, rows


def tail(run, lines=8):
    return "\n".join((run.stderr or "").strip().splitlines()[-lines:])


@pytest.mark.slow
def test_hydra_train_stops_on_a_bad_manifest_naming_each_line(tmp_path, corpus):
    root, rows = corpus
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text((root / "train.tsv").read_text())
    write_manifest(data / "valid.tsv", root, [rows[8], ("wav/missing.wav", 20000), ("wav/narrowband.wav", 16000),
                                              (rows[9][0], rows[9][1] + 5)])
    run = hydra_train(tmp_path, "pretraining", "sew_tiny", [f"task.data={data}", *TINY_PRETRAINING])
    assert run.returncode != 0
    last = tail(run)
    manifest = data / "valid.tsv"
    assert f"{manifest}:3: {root / 'wav' / 'missing.wav'}: audio file not found" in last, last
    assert f"{manifest}:4: {root / 'wav' / 'narrowband.wav'}: sample rate 8000 Hz, expected 16000 Hz" in last
    assert f"{manifest}:5: {root / rows[9][0]} has {rows[9][1]} samples, the manifest says {rows[9][1] + 5}" in last
    assert "[train_inner]" not in run.stdout + run.stderr
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()


@pytest.mark.slow
def test_hydra_train_refuses_an_absurd_task_key_by_name(tmp_path, corpus):
    root, _ = corpus
    run = hydra_train(tmp_path, "pretraining", "sew_tiny",
                      [f"task.data={root}", *TINY_PRETRAINING, "task.max_sample_size=8000"])  # min is 16000
    assert run.returncode != 0
    assert "task.max_sample_size=8000 is smaller than task.min_sample_size=16000" in tail(run)
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()


@pytest.mark.slow
def test_hydra_finetuning_stops_on_labels_outside_the_dictionary(tmp_path, corpus):
    root, rows = corpus
    data = tmp_path / "data"
    data.mkdir()
    write_manifest(data / "train.tsv", root, rows[:8])
    write_manifest(data / "valid.tsv", root, rows[8:])
    (data / "train.ltr").write_text("H I |\n" * 8)
    (data / "valid.ltr").write_text("H I |\nH Q | I |\n")
    (data / "dict.ltr.txt").write_text("| 10\nH 8\nI 8\n")
    pre = hydra_train(tmp_path / "pre", "pretraining", "sew_tiny",
                      [f"task.data={data}", *TINY_PRETRAINING, "optimization.max_update=1"])
    assert pre.returncode == 0, tail(pre, 30)
    run = hydra_train(tmp_path / "ft", "finetuning", "10m", [
        f"task.data={data}", f"model.w2v_path={tmp_path / 'pre' / 'ckpt' / 'checkpoint_last.pt'}",
        "common.cpu=true", "common.fp16=false", "distributed_training.distributed_world_size=1",
        "dataset.num_workers=0", "dataset.max_tokens=120000", "optimization.max_update=2",
        "model.mask_channel_length=4",  # 10m's 64 would be refused for the 64-wide tiny encoder
    ])
    assert run.returncode != 0
    last = tail(run)
    assert f"{data / 'valid.ltr'}:2: symbols ['Q'] are not in the target dictionary dict.ltr.txt" in last, last
    assert "[train_inner]" not in run.stdout + run.stderr
    assert not (tmp_path / "ft" / "ckpt" / "checkpoint_last.pt").exists()
